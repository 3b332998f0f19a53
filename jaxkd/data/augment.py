"""Augmentations as deterministic functions of explicit random draws.

Each function takes the random numbers it needs as arguments (drawn by the pipeline from a
generator keyed by ``(seed, step)``), so an augmentation is reproducible and can be recomputed
for any row of a global batch on any process. Batch functions are vectorised NumPy; the
per-example crop/resize functions (variable-size images, ImageNet) use PIL.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

__all__ = [
    "crop_and_flip",
    "mixup",
    "random_resized_crop_box",
    "center_crop_box",
    "crop_resize",
]


def crop_and_flip(
    x: np.ndarray,
    offsets: np.ndarray | None,
    flip: np.ndarray | None,
    padding: int,
) -> np.ndarray:
    """Pad-and-crop then horizontal flip, vectorised over the batch.

    Args:
      x: ``[B, *spatial, C]`` (``spatial`` = ``(H, W)`` for images, ``(L,)`` for sequences).
      offsets: ``[B, len(spatial)]`` ints in ``[0, 2 * padding]``: where the crop starts in the
        zero-padded example (``padding`` = no shift). Ignored when ``padding == 0``.
      flip: ``[B]`` bools: reverse the last spatial axis (W, or L) after cropping; or ``None``.
      padding: zero padding on each side of every spatial axis, in stored units (the padded
        pixels are 0 before normalisation, as torchvision's ``RandomCrop(padding=p)``).

    Returns:
      ``[B, *spatial, C]``, same dtype as ``x``.
    """
    b, spatial = x.shape[0], x.shape[1:-1]
    k = len(spatial)
    if padding:
        padded = np.zeros((b, *(n + 2 * padding for n in spatial), x.shape[-1]), x.dtype)
        padded[(slice(None), *(slice(padding, padding + n) for n in spatial))] = x
        # A view [B, *(2p+1,)*k, *spatial, C] of every crop; one fancy index picks each row's.
        windows = sliding_window_view(padded, spatial, axis=tuple(range(1, k + 1)))
        windows = windows.transpose(0, *range(1, k + 1), *range(k + 2, 2 * k + 2), k + 1)
        x = windows[(np.arange(b), *offsets.T)]
    if flip is not None and flip.any():
        # Whole pixels as one opaque element each: reversing [B, *spatial] of C-byte elements is
        # several times faster than reversing an axis with a small (C = 3) contiguous axis inside.
        x = np.ascontiguousarray(x)
        pixels = x.view(np.dtype((np.void, x.shape[-1] * x.itemsize)))[..., 0]
        out = pixels.copy()
        out[flip] = pixels[flip][..., ::-1]
        x = out.view(x.dtype).reshape(x.shape)
    return x


def mixup(x: np.ndarray, x_partner: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``lam * x + (1 - lam) * x_partner`` with ``lam [B]`` broadcast over the example axes."""
    lam = lam.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return lam * x + (1 - lam) * x_partner


def random_resized_crop_box(
    height: int,
    width: int,
    u: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Inception-style crop box ``(top, left, h, w)`` from uniforms ``u [attempts, 4]``.

    The algorithm of torchvision's ``RandomResizedCrop.get_params``: for each attempt, an area
    fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; the first box that fits
    is placed uniformly; after all attempts fail, a central crop with the ratio clamped.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for ua, ur, ut, ul in u:
        target = area * (scale[0] + ua * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + ur * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(ut * (height - h + 1)), height - h)
            left = min(int(ul * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """Central square ``(top, left, s, s)`` with ``s = round(fraction * min(height, width))``."""
    s = max(1, int(round(fraction * min(height, width))))
    return (height - s) // 2, (width - s) // 2, s, s


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops ``box = (top, left, h, w)`` from a uint8 ``[H, W, C]`` image, resizes to ``size``.

    Bilinear (antialiased when shrinking, as PIL always is). Returns uint8 ``[size, size, C]``.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"crop_resize needs a uint8 [H, W, C] image, got {image.dtype} {image.shape}")
    top, left, h, w = box
    c = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    out = np.asarray(out, dtype=np.uint8)
    return out[..., None] if c == 1 else out
