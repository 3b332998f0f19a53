"""Pictures of diffusion samples: scatter plots of 2-D sample sets, or image mosaics by class,
side by side."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping

import numpy as np

from jaxkd.core import report

__all__ = ["image_grid", "scatter_grid"]


def _label(name: str) -> str:
    """``teacher_4`` -> ``teacher, 4 steps``; other names as they are."""
    role, _, n = name.rpartition("_")
    if not (role and n.isdigit()):
        return name
    return f"{role}, {n} step{'s' if n != '1' else ''}"


def _save(fig, path: str | os.PathLike, title: str) -> None:
    """Titles, lays out and writes ``fig`` as a PNG, atomically."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    report.write_bytes_atomic(path, buffer.getvalue())


def scatter_grid(path: str | os.PathLike, sets: Mapping[str, np.ndarray], *, title: str = "",
                 max_points: int = 4000, columns: int = 4) -> None:
    """One scatter panel per named ``[n, 2]`` sample set, all on the first set's axis limits
    (widened by 25%, so points that land far off show at the border), written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    names = list(sets)
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(3.0 * min(columns, len(names)), 3.0 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ref = np.asarray(sets[names[0]])
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    pad = 0.25 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, min(columns, len(names)), i + 1)
        x = np.clip(np.asarray(sets[name])[:max_points], lo, hi)
        ax.scatter(x[:, 0], x[:, 1], s=1.0, alpha=0.5, linewidths=0)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_title(_label(name), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    _save(fig, path, title)


def image_grid(path: str | os.PathLike, sets: Mapping[str, np.ndarray], labels: np.ndarray, *,
               per_class: int = 6, vmax: float | None = None, title: str = "",
               columns: int = 4) -> None:
    """One panel per named image set ``[n, H, W, 1]`` (one channel), a mosaic with one row per
    class (``labels [n]``, the same for every set) and up to ``per_class`` images in it, drawn
    in grey on ``[0, vmax]`` (default: the first set's maximum), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    labels = np.asarray(labels)
    classes = np.unique(labels)
    names = list(sets)
    vmax = float(np.max(sets[names[0]])) if vmax is None else vmax
    rows = math.ceil(len(names) / columns)
    cols = min(columns, len(names))
    fig = Figure(figsize=(2.4 * cols, 2.4 * len(classes) / per_class * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        images = np.asarray(sets[name])
        if images.ndim != 4 or images.shape[-1] != 1 or len(images) != len(labels):
            raise ValueError(f"image_grid: set {name!r} has shape {images.shape}; expected "
                             f"[{len(labels)}, H, W, 1] (one label per image)")
        h, w = images.shape[1:3]
        mosaic = np.full((len(classes) * (h + 1), per_class * (w + 1)), np.nan)
        for r, c in enumerate(classes):
            for j, image in enumerate(images[labels == c][:per_class]):
                mosaic[r * (h + 1):r * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = image[..., 0]
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(_label(name), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path, title)
