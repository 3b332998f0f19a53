"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) in pure JAX.

Dataset distillation learns a few synthetic images whose training signal (gradients, trajectories,
feature statistics) matches that of the real data. DSA augments *both* sides of the match with the
*same* random transform, so the matching is invariant to it, and keeps every transform
differentiable in the pixels, so the synthetic images receive gradients through the augmentation
(to any order: it sits inside inner training steps whose gradients are differentiated again).

Shapes: images are ``[B, H, W, C]`` (NHWC). 1-D signals (MNIST-1D) are ``[B, L, C]`` and are treated
as ``[B, 1, L, C]`` images: "crop" shifts along L, "scale" stretches along L, "cutout" zeroes a
window of L, "flip" reverses L and "color" acts on the values; "rotate" has no 1-D meaning and is
rejected with a ValueError.

Single-op mode (DSA's default ``aug_mode='S'``): a strategy such as
``"color_crop_cutout_flip_scale_rotate"`` names a set of ops; each call picks ONE of them uniformly
at random (``jax.lax.switch`` on a traced index, so one compiled step serves every op), samples that
op's parameters and applies it. "color" is three sub-ops in sequence: brightness, saturation,
contrast. A repeated name counts twice in the draw, as in DSA.

Siamese semantics: with ``siamese=True`` one parameter set is drawn (as for a batch of one) and
shared by every example (DSA's ``randf[:] = randf[0]``), so ``dsa(real, key)`` and ``dsa(syn, key)``
apply the identical transform even when the two batches differ in size. With ``siamese=False``
each example gets its own parameters; the op itself is still one per call.

The random parameters are constants; outputs are linear (affine, for "color") in ``x``. "scale"
and "rotate" warp with bilinear sampling and zero padding, matching PyTorch's ``F.affine_grid`` +
``F.grid_sample(align_corners=True)``: normalised coordinates in [-1, 1], rotation about the centre.

Typical use inside a jitted distillation step::

    k = jax.random.fold_in(aug_key, step)
    real_aug = dsa(real, k, cfg)   # [B_real, H, W, C]
    syn_aug = dsa(syn, k, cfg)     # [B_syn, H, W, C], same transform as real_aug

For tests and analysis the two halves are public: ``sample_params`` draws an op's parameters and
``apply_op`` applies them; ``dsa(x, key) == apply_op(x, ops[i], sample_params(k, x.shape, ops[i]))``
with ``i, k = select_op(key, len(ops))``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")

Params = dict[str, jax.Array]


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Splits an underscore-separated DSA strategy into op names, in order.

    ``""`` and ``"none"`` (any case) mean no augmentation and give ``()``.

    Raises:
      ValueError: naming the unknown op and listing ``OPS``.
    """
    if strategy.strip().lower() in ("", "none"):
        return ()
    ops = tuple(strategy.strip().split("_"))
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown DSA op {op!r} in strategy {strategy!r}; valid ops: "
                             f"{', '.join(OPS)} (joined by '_'), or 'none' for no augmentation")
    return ops


@dataclasses.dataclass(frozen=True)
class DSAConfig:
    """DSA strategy and op strengths (defaults are DSA's ``ParamDiffAug``).

    Attributes:
      strategy: underscore-separated op names from ``OPS``; ``"none"`` disables augmentation.
      scale: per-axis scale factors ``sx, sy ~ U[1/scale, scale]``, drawn independently.
      rotate: angle in degrees ``~ U[-rotate, rotate]``.
      crop_pad: integer shifts in ``[-pad, pad]`` per axis, ``pad = int(size * crop_pad + 0.5)``.
      cutout: a zeroed rectangle of ``int(size * cutout + 0.5)`` pixels per axis, random centre.
      brightness: adds ``(U[0, 1] - 0.5) * brightness``.
      saturation: ``(x - mean_C) * U[0, 1] * saturation + mean_C`` (mean over channels per pixel).
      contrast: ``(x - mean) * (U[0, 1] + contrast) + mean`` (mean over H, W, C per example).
      flip_prob: probability of a horizontal flip (W axis; L for 1-D input).
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    scale: float = 1.2
    rotate: float = 15.0
    crop_pad: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip_prob: float = 0.5

    def __post_init__(self):
        parse_strategy(self.strategy)
        if self.scale < 1.0:
            raise ValueError(f"DSAConfig.scale must be >= 1 (factors in [1/scale, scale]); "
                             f"got {self.scale}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"DSAConfig.flip_prob must be in [0, 1]; got {self.flip_prob}")


def _check_rank(shape: tuple[int, ...]) -> None:
    if len(shape) not in (3, 4):
        raise ValueError(f"DSA expects images [B, H, W, C] or 1-D signals [B, L, C]; "
                         f"got an array of shape {tuple(shape)}")


def _check(op: str, shape: tuple[int, ...]) -> None:
    """Validates the input rank and that ``op`` applies to it."""
    _check_rank(shape)
    if op not in OPS:
        raise ValueError(f"unknown DSA op {op!r}; valid ops: {', '.join(OPS)}")
    if op == "rotate" and len(shape) == 3:
        raise ValueError(f"DSA op 'rotate' needs images [B, H, W, C] but got 1-D input of shape "
                         f"{tuple(shape)}; remove 'rotate' from the strategy for 1-D data")


def sample_params(key: jax.Array, shape: tuple[int, ...], op: str, cfg: DSAConfig = DSAConfig(),
                  *, siamese: bool = True) -> Params:
    """Draws the random parameters of one op for an input of ``shape``.

    Args:
      key: PRNG key.
      shape: the input's shape, ``[B, H, W, C]`` or ``[B, L, C]``.
      op: one of ``OPS``.
      cfg: op strengths.
      siamese: share one draw (made as for a batch of one) across the batch; otherwise one per
        example.

    Returns:
      a dict of arrays with leading dimension ``B``, consumed by ``apply_op``:
      color: ``brightness`` (additive), ``saturation`` and ``contrast`` (factors), each ``[B]``;
      crop: ``shift`` ``[B, 2]`` int (dy, dx), ``out[i, j] = x[i + dy, j + dx]`` or 0;
      cutout: ``lo``, ``hi`` ``[B, 2]`` int, rows ``[lo0, hi0)`` x cols ``[lo1, hi1)`` are zeroed;
      flip: ``flip`` ``[B]`` bool; scale, rotate: ``theta`` ``[B, 2, 3]`` (see ``affine_warp``).
    """
    _check(op, shape)
    b = shape[0]
    h, w = (1, shape[1]) if len(shape) == 3 else shape[1:3]
    n = 1 if siamese else b
    if op == "color":
        kb, ks, kc = jax.random.split(key, 3)
        p = {"brightness": (jax.random.uniform(kb, (n,)) - 0.5) * cfg.brightness,
             "saturation": jax.random.uniform(ks, (n,)) * cfg.saturation,
             "contrast": jax.random.uniform(kc, (n,)) + cfg.contrast}
    elif op == "crop":
        pad = np.array([int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)])
        p = {"shift": jax.random.randint(key, (n, 2), -pad, pad + 1)}
    elif op == "cutout":
        hole = np.array([int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)])
        # As DSA: centre in [0, dim + 1 - hole % 2) per axis; the hole starts hole // 2 before it.
        centre = jax.random.randint(key, (n, 2), 0, np.array([h, w]) + 1 - hole % 2)
        p = {"lo": centre - hole // 2, "hi": centre - hole // 2 + hole}
    elif op == "flip":
        p = {"flip": jax.random.uniform(key, (n,)) < cfg.flip_prob}
    elif op == "scale":
        s = jax.random.uniform(key, (n, 2), minval=1.0 / cfg.scale, maxval=cfg.scale)
        zero = jnp.zeros((n,), s.dtype)
        p = {"theta": jnp.stack([jnp.stack([s[:, 0], zero, zero], -1),
                                 jnp.stack([zero, s[:, 1], zero], -1)], 1)}
    else:  # rotate
        angle = jnp.deg2rad(jax.random.uniform(key, (n,), minval=-cfg.rotate, maxval=cfg.rotate))
        c, s, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
        p = {"theta": jnp.stack([jnp.stack([c, s, zero], -1), jnp.stack([-s, c, zero], -1)], 1)}
    return {k: jnp.broadcast_to(v, (b, *v.shape[1:])) for k, v in p.items()}


def _gather_zero(x: jax.Array, iy: jax.Array, ix: jax.Array) -> jax.Array:
    """``x[b, iy, ix]`` for integer-valued ``iy, ix`` ``[B, H', W']``; 0 outside the image."""
    h, w = x.shape[1:3]
    valid = (iy >= 0) & (iy <= h - 1) & (ix >= 0) & (ix <= w - 1)
    iy = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
    ix = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
    b = jnp.arange(x.shape[0])[:, None, None]
    return jnp.where(valid[..., None], x[b, iy, ix], jnp.zeros((), x.dtype))


def _normalised(n: int, dtype) -> jax.Array:
    """Pixel centres in [-1, 1] (align_corners=True); a size-1 axis sits at 0, as in PyTorch."""
    return jnp.zeros((1,), dtype) if n == 1 else jnp.linspace(-1.0, 1.0, n, dtype=dtype)


def affine_warp(x: jax.Array, theta: jax.Array) -> jax.Array:
    """Bilinear affine warp with zero padding, as ``grid_sample(x, affine_grid(theta))``.

    PyTorch semantics with ``align_corners=True``: output pixel ``(i, j)`` has normalised
    coordinates ``(xn, yn) = (-1 + 2 j / (W - 1), -1 + 2 i / (H - 1))``; it samples the input at
    ``theta @ (xn, yn, 1)``, mapped back to pixels by ``p = (q + 1) / 2 * (size - 1)``.
    Differentiable in ``x`` (gathers with constant weights); coordinates are computed elementwise,
    not by a matmul, so accelerator matmul precision cannot perturb them.

    Args:
      x: ``[B, H, W, C]``.
      theta: ``[B, 2, 3]``, rows are (x, y) in normalised coordinates.

    Returns:
      ``[B, H, W, C]`` with the dtype of ``x * theta``.
    """
    if x.ndim != 4:
        raise ValueError(f"affine_warp expects [B, H, W, C]; got shape {x.shape}")
    _, h, w, _ = x.shape
    yn, xn = jnp.meshgrid(_normalised(h, theta.dtype), _normalised(w, theta.dtype), indexing="ij")
    t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1] against the [H, W] grid
    px = (t[:, 0, 0] * xn + t[:, 0, 1] * yn + t[:, 0, 2] + 1.0) * (w - 1) / 2.0
    py = (t[:, 1, 0] * xn + t[:, 1, 1] * yn + t[:, 1, 2] + 1.0) * (h - 1) / 2.0
    x0, y0 = jnp.floor(px), jnp.floor(py)
    wx1, wy1 = px - x0, py - y0
    out = 0.0
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            out = out + _gather_zero(x, y0 + dy, x0 + dx) * (wy * wx)[..., None]
    return out


def _color(x: jax.Array, p: Params) -> jax.Array:
    """Brightness, then saturation (mean over C), then contrast (mean over H, W, C)."""
    per_example = lambda v: v[:, None, None, None]  # noqa: E731
    x = x + per_example(p["brightness"])
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * per_example(p["saturation"]) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * per_example(p["contrast"]) + mean


def apply_op(x: jax.Array, op: str, params: Params) -> jax.Array:
    """Applies one op with fixed parameters (from ``sample_params``); differentiable in ``x``.

    Args:
      x: ``[B, H, W, C]`` images or ``[B, L, C]`` signals.
      op: one of ``OPS``.
      params: ``sample_params(key, x.shape, op, ...)``.

    Returns:
      an array of the shape and dtype of ``x``.
    """
    _check(op, x.shape)
    one_d = x.ndim == 3
    x4 = x[:, None] if one_d else x
    b, h, w, _ = x4.shape
    if op == "color":
        y = _color(x4, params)
    elif op == "crop":
        dy, dx = params["shift"][:, 0, None, None], params["shift"][:, 1, None, None]
        rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        y = _gather_zero(x4, jnp.broadcast_to(rows + dy, (b, h, w)),
                         jnp.broadcast_to(cols + dx, (b, h, w)))
    elif op == "cutout":
        lo, hi = params["lo"][:, :, None], params["hi"][:, :, None]
        rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
        in_rows = (rows >= lo[:, 0]) & (rows < hi[:, 0])  # [B, H]
        in_cols = (cols >= lo[:, 1]) & (cols < hi[:, 1])  # [B, W]
        hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]
        y = jnp.where(hole, jnp.zeros((), x4.dtype), x4)
    elif op == "flip":
        y = jnp.where(params["flip"][:, None, None, None], x4[:, :, ::-1], x4)
    else:  # scale, rotate
        y = affine_warp(x4, params["theta"])
    y = y.astype(x.dtype)
    return y[:, 0] if one_d else y


def select_op(key: jax.Array, n_ops: int) -> tuple[jax.Array, jax.Array]:
    """Splits ``key`` into (uniform op index in ``[0, n_ops)`` as a traced int32, params key)."""
    k_op, k_params = jax.random.split(key)
    return jax.random.randint(k_op, (), 0, n_ops, dtype=jnp.int32), k_params


def _sample_and_apply(x, key, *, op, cfg, siamese):
    return apply_op(x, op, sample_params(key, x.shape, op, cfg, siamese=siamese))


def dsa(x: jax.Array, key: jax.Array, cfg: DSAConfig = DSAConfig(), *,
        siamese: bool = True) -> jax.Array:
    """Differentiable siamese augmentation, single-op mode (see the module docstring).

    Picks one op of ``cfg.strategy`` uniformly from ``key`` and applies it with parameters drawn
    from ``key``. Jit-able with ``key`` as an argument (the op choice is traced) and differentiable
    in ``x`` to any order.

    Args:
      x: ``[B, H, W, C]`` images or ``[B, L, C]`` 1-D signals.
      key: PRNG key; the same key gives the same transform for any batch when ``siamese``.
      cfg: strategy and strengths; a strategy with no ops returns ``x`` unchanged.
      siamese: one parameter set for the whole batch (True) or one per example (False).

    Returns:
      the augmented batch, same shape and dtype as ``x``.

    Raises:
      ValueError: on a rank other than 3 or 4 (unless the strategy is empty), or "rotate" in
        the strategy for 1-D input.
    """
    ops = parse_strategy(cfg.strategy)
    if not ops:
        return x
    _check_rank(x.shape)
    for op in ops:
        _check(op, x.shape)
    index, k_params = select_op(key, len(ops))
    branches = [functools.partial(_sample_and_apply, op=op, cfg=cfg, siamese=siamese)
                for op in ops]
    return jax.lax.switch(index, branches, x, k_params)
