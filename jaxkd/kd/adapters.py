"""Small trainable modules that map student features into the space a feature loss compares in.

They belong to the student side of distillation: their parameters train with the student (or,
for the FT paraphraser, in a pre-training stage on the teacher's features) and are applied by
the caller before the pure losses in ``jaxkd.losses.features``. Inputs are NHWC ``[B, H, W, C]``
conv maps or ``[B, D]`` embeddings; outputs are float32 unless ``dtype`` says otherwise.

Modules with batch norm take ``train`` as a required keyword (running statistics live in the
``batch_stats`` collection, PyTorch ``BatchNorm2d`` defaults), like the models in
``jaxkd.models``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

# PyTorch BatchNorm2d defaults (momentum=0.1 means keep 0.9 of the running average).
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5
_LEAKY_SLOPE = 0.1


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` linear map along one axis (built at trace time).

    Shrinking (``n_out <= n_in``): adaptive average pooling, bin ``i`` averages input rows
    ``floor(i * n_in / n_out)`` to ``ceil((i + 1) * n_in / n_out) - 1`` (PyTorch's
    ``adaptive_avg_pool2d``). Growing: nearest neighbour, output ``i`` copies input
    ``floor(i * n_in / n_out)`` (PyTorch's ``interpolate(mode='nearest')``).
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        if n_out <= n_in:
            start = (i * n_in) // n_out
            end = -((-(i + 1) * n_in) // n_out)
            m[i, start:end] = 1.0 / (end - start)
        else:
            m[i, (i * n_in) // n_out] = 1.0
    return m


def resize_spatial(x: jax.Array, out_hw: Sequence[int]) -> jax.Array:
    """Resizes ``[B, H, W, C]`` to ``[B, H', W', C]``, each axis independently.

    An axis that shrinks is adaptive-average-pooled (PyTorch ``adaptive_avg_pool2d``; exact
    average pooling when the size divides); an axis that grows is nearest-neighbour upsampled
    (PyTorch ``interpolate(mode='nearest')``; pixel repetition for integer factors). Equal sizes
    are returned unchanged. The map is linear with rows summing to 1, so it commutes with 1x1
    convolutions (bias included).
    """
    if x.ndim != 4:
        raise ValueError(f"resize_spatial: x must be [B, H, W, C], got shape {tuple(x.shape)}")
    out_h, out_w = (int(v) for v in out_hw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_spatial: out_hw must be positive, got {tuple(out_hw)}")
    _, h, w, _ = x.shape
    if (h, w) == (out_h, out_w):
        return x
    # Float32 weights (1/3 is not exact in bf16); the result keeps the input's dtype.
    mh = jnp.asarray(_resize_matrix(h, out_h))
    mw = jnp.asarray(_resize_matrix(w, out_w))
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", mh, x.astype(jnp.float32), precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, y, precision=hi).astype(x.dtype)


def needs_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> bool:
    """Whether a student feature of ``student_shape`` needs a regressor before a shape-matching
    loss (FitNets, VID, FT, ICKD) can compare it with a teacher feature of ``teacher_shape``.

    True when anything but the batch axis differs: the rank, the spatial size or the channel
    count of ``[B, H, W, C]`` maps, or the width of ``[B, D]`` embeddings. Relational losses
    (RKD, PKT, SP, CC) compare ``B x B`` matrices and need no adapter for any widths.

    Raises:
      ValueError: the batch sizes differ (no adapter fixes that).
    """
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if not s or not t:
        raise ValueError(f"needs_adapter: shapes need a batch axis, got {s} and {t}")
    if s[0] != t[0]:
        raise ValueError(
            f"needs_adapter: student shape {s} and teacher shape {t} have different batch sizes"
        )
    return s[1:] != t[1:]


class ConvRegressor(nn.Module):
    """FitNets regressor: 1x1 conv from the student's channels to ``out_channels``.

    ``[B, H, W, C_s] -> [B, H', W', out_channels]`` float32. When ``out_hw`` is given and differs
    from ``(H, W)`` the input is first resized with :func:`resize_spatial` (adaptive average
    pooling for an axis that shrinks, nearest upsampling for one that grows). Then an optional
    batch norm and ReLU. RepDistiller's ``ConvReg`` (used for the FitNets benchmark) ends with
    BN + ReLU, the defaults here, but reaches the teacher's size with strided / transposed convs
    instead of a resize; use ``use_batch_norm=False, relu=False`` for a purely linear map.
    """

    out_channels: int
    out_hw: tuple[int, int] | None = None
    use_batch_norm: bool = True
    relu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ConvRegressor: x must be [B, H, W, C], got shape {x.shape}")
        if self.out_hw is not None:
            x = resize_spatial(x, self.out_hw)
        y = nn.Conv(self.out_channels, (1, 1), padding="VALID", use_bias=not self.use_batch_norm,
                    dtype=self.dtype, name="conv")(x)
        if self.use_batch_norm:
            y = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                             epsilon=_BN_EPS, dtype=self.dtype, name="bn")(y)
        if self.relu:
            y = nn.relu(y)
        return y.astype(jnp.float32)


class LinearEmbed(nn.Module):
    """Projection head for CRD / RKD: flatten, dense to ``dim``, L2-normalise each row.

    ``[B, ...] -> [B, dim]`` float32 with unit-norm rows (RepDistiller's ``Embed``: linear +
    ``Normalize(2)``; CRD uses ``dim = 128`` for both the student and the teacher head). An
    all-zero row stays zero (with a zero, not NaN, gradient).
    """

    dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        y = nn.Dense(self.dim, dtype=self.dtype, name="linear")(x).astype(jnp.float32)
        sq = jnp.sum(y * y, axis=-1, keepdims=True)
        positive = sq > 0
        norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 1.0)
        return y / norm


class VIDRegressor(nn.Module):
    """VID mean regressor plus the per-channel variance parameter.

    ``__call__(x) -> (mean, alpha)``: ``mean`` is ``[B, H', W', out_channels]`` from three 1x1
    convs without bias and ReLUs between them (``C_s -> mid -> mid -> out``), as in
    RepDistiller's ``VIDLoss`` regressor; ``alpha`` is the ``[out_channels]`` parameter with
    ``softplus(alpha) + eps = init_pred_var`` at initialisation. Pass both to
    ``jaxkd.losses.features.vid_loss(mean, teacher_feat, alpha, eps=eps)``. ``mid_channels``
    defaults to ``out_channels`` (RepDistiller's benchmark setting). ``out_hw`` resizes the input
    first (see :func:`resize_spatial`).
    """

    out_channels: int
    mid_channels: int | None = None
    init_pred_var: float = 5.0
    eps: float = 1e-5
    out_hw: tuple[int, int] | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not self.init_pred_var > self.eps:
            raise ValueError(
                f"VIDRegressor: init_pred_var ({self.init_pred_var}) must exceed eps ({self.eps})"
            )
        if x.ndim == 4 and self.out_hw is not None:
            x = resize_spatial(x, self.out_hw)
        mid = self.mid_channels or self.out_channels
        conv = functools.partial(nn.Conv, kernel_size=(1, 1), use_bias=False, dtype=self.dtype)
        if x.ndim == 2:  # embeddings: 1x1 convs are dense layers
            conv = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
        y = nn.relu(conv(mid, name="conv1")(x))
        y = nn.relu(conv(mid, name="conv2")(y))
        y = conv(self.out_channels, name="conv3")(y)
        # Inverse softplus of (init_pred_var - eps).
        init = float(np.log(np.expm1(self.init_pred_var - self.eps)))
        alpha = self.param("alpha", nn.initializers.constant(init), (self.out_channels,),
                           jnp.float32)
        return y.astype(jnp.float32), alpha


class _ConvBNAct(nn.Module):
    """3x3 stride-1 (transposed) conv, optional batch norm, LeakyReLU(0.1)."""

    features: int
    use_batch_norm: bool
    transpose: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        layer = nn.ConvTranspose if self.transpose else nn.Conv
        x = layer(self.features, (3, 3), padding="SAME", dtype=self.dtype, name="conv")(x)
        if self.use_batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                             epsilon=_BN_EPS, dtype=self.dtype, name="bn")(x)
        return nn.leaky_relu(x, _LEAKY_SLOPE)


class Paraphraser(nn.Module):
    """Factor-transfer paraphraser: a convolutional autoencoder on the teacher's feature.

    Encoder ``C -> C -> F -> F`` and decoder ``F -> F -> C -> C`` of 3x3 (transposed) convs,
    stride 1, each followed by optional BN and LeakyReLU(0.1) (RepDistiller's ``Paraphraser``,
    BN off by default as there; ``factor_channels = int(C * k)`` with paraphrase rate
    ``k = 0.5``). ``out_channels`` is the teacher feature's channel count ``C``. Train it first to
    reconstruct the teacher feature (``mean((recon - feat)^2)``), then freeze it and use
    ``encode`` for the teacher factor in ``factor_transfer_loss``.

    ``__call__(x, train=...) -> (factor [B, H, W, F], reconstruction [B, H, W, C])``;
    ``encode(x, train=...) -> factor`` (``model.apply(variables, x, train=False,
    method=Paraphraser.encode)``).
    """

    out_channels: int
    factor_channels: int
    use_batch_norm: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        block = functools.partial(_ConvBNAct, use_batch_norm=self.use_batch_norm,
                                  dtype=self.dtype)
        f, c = self.factor_channels, self.out_channels
        self.encoder = [block(c, name="enc1"), block(f, name="enc2"), block(f, name="enc3")]
        self.decoder = [block(f, transpose=True, name="dec1"),
                        block(c, transpose=True, name="dec2"),
                        block(c, transpose=True, name="dec3")]

    def encode(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.out_channels:
            raise ValueError(
                f"Paraphraser: x must be [B, H, W, {self.out_channels}] (out_channels), got "
                f"shape {tuple(x.shape)}"
            )
        for layer in self.encoder:
            x = layer(x, train=train)
        return x.astype(jnp.float32)

    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        factor = self.encode(x, train=train)
        y = factor
        for layer in self.decoder:
            y = layer(y, train=train)
        return factor, y.astype(jnp.float32)


class Translator(nn.Module):
    """Factor-transfer translator on the student's feature: ``C_s -> C_s -> F -> F``.

    Three 3x3 stride-1 convs, each with optional BN (on by default, as in RepDistiller's
    ``Translator``) and LeakyReLU(0.1). ``[B, H, W, C_s] -> [B, H, W, factor_channels]`` float32;
    its output is ``student_factor`` in ``factor_transfer_loss``. The student and teacher maps
    must share a resolution (resize with ``out_hw`` otherwise).
    """

    factor_channels: int
    use_batch_norm: bool = True
    out_hw: tuple[int, int] | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Translator: x must be [B, H, W, C], got shape {x.shape}")
        if self.out_hw is not None:
            x = resize_spatial(x, self.out_hw)
        block = functools.partial(_ConvBNAct, use_batch_norm=self.use_batch_norm,
                                  dtype=self.dtype)
        y = block(x.shape[-1], name="enc1")(x, train=train)
        y = block(self.factor_channels, name="enc2")(y, train=train)
        y = block(self.factor_channels, name="enc3")(y, train=train)
        return y.astype(jnp.float32)


__all__ = [
    "ConvRegressor",
    "LinearEmbed",
    "Paraphraser",
    "Translator",
    "VIDRegressor",
    "needs_adapter",
    "resize_spatial",
]
