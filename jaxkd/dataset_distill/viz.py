"""Pictures of synthetic sets: images (or 1-D signals) next to real examples of each class."""

from __future__ import annotations

import io

import numpy as np

from jaxkd.core import report

__all__ = ["synthetic_grid"]


def synthetic_grid(path: str, images: np.ndarray, labels: np.ndarray, real: np.ndarray,
                   real_labels: np.ndarray, *, max_per_class: int = 10, title: str = "") -> None:
    """PNG: one row per class, up to ``max_per_class`` synthetic examples, then as many real.

    Images ``[N, H, W, C]`` are drawn as pictures (grey for one channel, each shown on its own
    min-max range); 1-D signals ``[N, L, C]`` as line plots (channel 0).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, real = np.asarray(images), np.asarray(real)
    classes = np.unique(np.concatenate([labels, real_labels]))
    per = max(1, min(max_per_class, max(int(np.sum(labels == c)) for c in classes)))
    cols = 2 * per
    fig = Figure(figsize=(0.9 * cols + 0.6, 0.9 * len(classes) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    is_1d = images.ndim == 3
    for r, c in enumerate(classes):
        syn_c = images[labels == c][:per]
        real_c = real[real_labels == c][:per]
        for j, (ex, kind) in enumerate([(e, "syn") for e in syn_c] + [(None, None)] *
                                       (per - len(syn_c)) + [(e, "real") for e in real_c]):
            if ex is None:
                continue
            ax = fig.add_subplot(len(classes), cols, r * cols + j + 1)
            if is_1d:
                ax.plot(ex[:, 0], color="tab:blue" if kind == "syn" else "tab:gray", lw=1)
            else:
                shown = ex[..., 0] if ex.shape[-1] == 1 else ex
                span = shown.max() - shown.min()
                ax.imshow((shown - shown.min()) / (span if span > 0 else 1.0),
                          cmap="gray" if shown.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and j in (0, per):
                ax.set_title("synthetic" if j == 0 else "real", fontsize=8, loc="left")
            if j == 0:
                ax.set_ylabel(str(int(c)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    report.write_bytes_atomic(path, buffer.getvalue())
