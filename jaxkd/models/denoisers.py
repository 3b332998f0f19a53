"""Networks for diffusion and consistency models (TrigFlow velocity ``F(x / sigma_d, t)``).

All take the time ``t`` itself as their noise input (TrigFlow's ``c_noise = t``) through a
sinusoidal positional embedding, and an optional integer class label with one extra "null"
class (id ``num_classes``) for classifier-free guidance, and optionally the guidance scale
itself (``guidance_input``: guided distillation's w-conditioned student). No BatchNorm anywhere: consistency
training differentiates the network along time with a JVP, which batch statistics would break.

- :class:`MLPDenoiser`: for 2-D (or any flat) data.
- :class:`UNet`: a small GroupNorm UNet for images.
- :class:`AdaptiveWeight`: sCM's learned loss weighting ``w(t)`` (a scalar per example).
- :class:`GANHead`: DMD2's real/fake classifier on a denoiser's bottleneck features, which
  both denoisers ``sow`` as ``intermediates/bottleneck`` (:func:`bottleneck`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

__all__ = ["AdaptiveWeight", "GANHead", "MLPDenoiser", "UNet", "bottleneck",
           "positional_embedding"]


def positional_embedding(t: jax.Array, dim: int, *, scale: float = 1.0,
                         max_period: float = 10_000.0) -> jax.Array:
    """``[B] -> [B, dim]``: ``[cos(scale t w_i), sin(scale t w_i)]``, ``w_i = max_period^(-i/half)``.

    EDM's positional embedding. sCM feeds it ``c_noise = t`` itself (``scale`` 1): the
    embedding, and so the network, varies slowly in ``t``, which keeps the time derivative
    that consistency training takes by JVP small (large Fourier scales made sCM unstable).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = scale * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class _Conditioning(nn.Module):
    """Time (and class, and guidance scale) embedding ``[B, dim]``: positional -> MLP
    (+ a learned class vector) (+ an MLP of the guidance scale's positional embedding whose last
    layer starts at zero, so a teacher's weights load into a w-conditioned student unchanged)."""

    dim: int
    num_classes: int = 0
    time_scale: float = 1.0
    guidance_input: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array, labels: jax.Array | None,
                 guidance: jax.Array | None = None) -> jax.Array:
        emb = positional_embedding(t, self.dim, scale=self.time_scale)
        emb = nn.Dense(self.dim, dtype=self.dtype, name="time_fc1")(emb)
        emb = nn.Dense(self.dim, dtype=self.dtype, name="time_fc2")(nn.silu(emb))
        if self.num_classes:
            if labels is None:
                raise ValueError(f"this network is class-conditional ({self.num_classes} "
                                 "classes): pass labels (id num_classes = unconditional)")
            emb = emb + nn.Embed(self.num_classes + 1, self.dim, dtype=self.dtype,
                                 name="class_embed")(labels)
        if self.guidance_input:
            if guidance is None:
                raise ValueError("this network takes the guidance scale as an input "
                                 "(guidance_input=True): pass guidance [B]")
            g = positional_embedding(guidance, self.dim)
            g = nn.Dense(self.dim, dtype=self.dtype, name="guidance_fc1")(g)
            emb = emb + nn.Dense(self.dim, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                                 name="guidance_fc2")(nn.silu(g))
        elif guidance is not None:
            raise ValueError("guidance given to a network built with guidance_input=False")
        return emb


class MLPDenoiser(nn.Module):
    """``F(x, t[, labels]) -> [B, D]``: an MLP whose every hidden layer receives the conditioning.

    Input ``x`` ``[B, D]`` (already divided by sigma_d), ``t`` ``[B]`` in ``[0, pi/2]``,
    ``labels`` ``[B]`` int (``num_classes`` = the null class) when ``num_classes > 0``.
    Output float32 ``[B, D]``.
    """

    hidden: int = 256
    depth: int = 4
    emb_dim: int = 128
    num_classes: int = 0
    time_scale: float = 1.0
    guidance_input: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 guidance: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2 or t.shape != x.shape[:1]:
            raise ValueError(f"MLPDenoiser expects x [B, D] and t [B]; got {x.shape}, {t.shape}")
        emb = _Conditioning(self.emb_dim, self.num_classes, self.time_scale,
                            self.guidance_input, self.dtype, name="cond")(t, labels, guidance)
        h = nn.Dense(self.hidden, dtype=self.dtype, name="in")(x.astype(self.dtype))
        for i in range(self.depth):
            h = h + nn.Dense(self.hidden, dtype=self.dtype, name=f"emb{i}")(nn.silu(emb))
            h = nn.Dense(self.hidden, dtype=self.dtype, name=f"fc{i}")(nn.silu(h))
        self.sow("intermediates", "bottleneck", h)
        out = nn.Dense(x.shape[-1], dtype=self.dtype, name="out")(nn.silu(h))
        return out.astype(jnp.float32)


class AdaptiveWeight(nn.Module):
    """sCM's adaptive loss weighting ``w(t)``: ``[B] -> [B]``, zero at initialisation."""

    emb_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        emb = positional_embedding(t, self.emb_dim)
        h = nn.silu(nn.Dense(self.emb_dim, dtype=self.dtype, name="fc")(emb))
        w = nn.Dense(1, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="out")(h)
        return w[:, 0].astype(jnp.float32)


def _groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` up to 32 that leaves at least 4
    channels per group (32 for wide layers; e.g. 24 for the 144 channels of a skip concat)."""
    return max(g for g in range(1, 33) if channels % g == 0 and (channels // g >= 4 or g == 1))


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the conditioning, GroupNorm -> SiLU -> conv, skip."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype, name="norm1")(x)
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv1")(nn.silu(h))
        h = h + nn.Dense(self.channels, dtype=self.dtype, name="emb")(nn.silu(emb))[:, None, None]
        h = nn.GroupNorm(_groups(self.channels), dtype=self.dtype, name="norm2")(h)
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="conv2")(nn.silu(h))
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="skip")(x)
        return x + h


class UNet(nn.Module):
    """A small UNet ``F(x, t[, labels]) -> [B, H, W, C]`` for images (no BatchNorm: GroupNorm).

    Input ``x`` ``[B, H, W, C]`` (already divided by sigma_d) with ``H, W`` divisible by
    ``2 ** (len(channel_mult) - 1)``, ``t`` ``[B]``, ``labels`` ``[B]`` int when
    ``num_classes > 0`` (``num_classes`` = the null class for classifier-free guidance).
    ``num_res_blocks`` residual blocks per resolution on the way down, one more on the way up
    (taking the skip connection), two in the middle; resolution halves between levels
    (average pooling) and doubles back (nearest neighbour). Output float32, same shape as ``x``.
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    emb_dim: int = 128
    num_classes: int = 0
    time_scale: float = 1.0
    guidance_input: bool = False
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 guidance: jax.Array | None = None) -> jax.Array:
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.ndim != 4 or t.shape != x.shape[:1] or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"UNet expects x [B, H, W, C] with H, W divisible by {factor} and "
                             f"t [B]; got {x.shape}, {t.shape}")
        emb = _Conditioning(self.emb_dim, self.num_classes, self.time_scale,
                            self.guidance_input, self.dtype, name="cond")(t, labels, guidance)
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="in")(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = _ResBlock(self.channels * mult, self.dtype, name=f"down{level}_{i}")(h, emb)
                skips.append(h)
            if level < len(self.channel_mult) - 1:
                b, hh, ww, c = h.shape
                h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
                skips.append(h)
        for i in range(2):
            h = _ResBlock(h.shape[-1], self.dtype, name=f"mid{i}")(h, emb)
        self.sow("intermediates", "bottleneck", h)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = _ResBlock(self.channels * mult, self.dtype, name=f"up{level}_{i}")(h, emb)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype, name="out_norm")(h))
        out = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                      name="out")(h)
        return out.astype(jnp.float32)


def bottleneck(net: nn.Module, params, x: jax.Array, t: jax.Array, *args) -> jax.Array:
    """The features a denoiser sows at its bottleneck (the MLP's last hidden layer ``[B, H]``,
    the UNet's middle blocks' output ``[B, h, w, C]``) for input ``(x, t, *args)``."""
    _, state = net.apply(params, x, t, *args, mutable=["intermediates"])
    return state["intermediates"]["bottleneck"][0]


class GANHead(nn.Module):
    """DMD2's GAN classifier: bottleneck features ``[B, ..., C]`` -> a real/fake logit ``[B]``
    (spatial mean, then a two-layer MLP)."""

    hidden: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = features.reshape(features.shape[0], -1, features.shape[-1]).mean(axis=1)
        h = nn.silu(nn.Dense(self.hidden, dtype=self.dtype, name="fc")(h.astype(self.dtype)))
        return nn.Dense(1, dtype=self.dtype, name="out")(h)[:, 0].astype(jnp.float32)
