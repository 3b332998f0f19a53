"""ZCA whitening of a data set, the optional preprocessing of MTT, KIP and FRePo.

Each example is flattened to ``D`` values; with the training set's mean ``mu`` and (unbiased)
covariance ``Sigma = U diag(s) U^T``, the whitening matrix is

    W = U diag(1 / sqrt(s + eps)) U^T,        x_white = (x - mu) W,

and its inverse ``W^-1 = U diag(sqrt(s + eps)) U^T`` maps whitened inputs back
(``x = x_white W^-1 + mu``). ``eps`` regularises the small eigenvalues: with ``eps = 0`` the
whitened training set has identity covariance; with ``eps > 0`` its covariance is
``U diag(s / (s + eps)) U^T``, so directions with variance far below ``eps`` are damped rather
than blown up. This is kornia's ``ZCAWhitening`` (unbiased covariance, ``eps`` added to the
eigenvalues), which MTT's reference code applies with ``eps = 0.1`` to per-channel normalised
images. The synthetic set then lives in whitened space: it is distilled, clipped and evaluated
there, and mapped back with the inverse for ``synthetic.npz`` and the image grid.
"""

import dataclasses

import numpy as np

__all__ = ["Zca", "fit_zca"]


@dataclasses.dataclass(frozen=True)
class Zca:
    """A fitted ZCA transform: ``mean`` [D], ``matrix`` W [D, D], ``inverse`` W^-1 [D, D]."""

    mean: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray

    def apply(self, x) -> np.ndarray:
        """Whitens ``x`` [N, ...] (any example shape with D values)."""
        x = np.asarray(x, np.float32)
        flat = x.reshape(x.shape[0], -1)
        return ((flat - self.mean) @ self.matrix).astype(np.float32).reshape(x.shape)

    def invert(self, x) -> np.ndarray:
        """Maps whitened ``x`` [N, ...] back to the input space."""
        x = np.asarray(x, np.float32)
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self.inverse + self.mean).astype(np.float32).reshape(x.shape)


def fit_zca(x, eps: float) -> Zca:
    """Fits ZCA whitening to examples ``x`` [N, ...] (N >= 2) with regulariser ``eps`` >= 0.

    The covariance and its eigendecomposition are computed in float64; the returned matrices
    are float32. ``eps = 0`` needs a full-rank covariance (raises ``ValueError`` otherwise).
    """
    if eps < 0:
        raise ValueError(f"ZCA eps={eps} must be >= 0")
    flat = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    if flat.shape[0] < 2:
        raise ValueError(f"ZCA needs at least 2 examples to estimate a covariance, got "
                         f"{flat.shape[0]}")
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred / (flat.shape[0] - 1)
    s, u = np.linalg.eigh(cov)
    # Zero-variance directions come back as round-off (either sign): numerical rank as
    # np.linalg.matrix_rank counts it.
    zero = s <= np.max(s) * len(s) * np.finfo(np.float64).eps
    s = np.where(zero, 0.0, s) + eps
    if eps == 0 and np.any(zero):
        raise ValueError("ZCA with eps=0 needs a full-rank covariance; this data has "
                         f"{int(np.sum(zero))} zero-variance directions (use eps > 0)")
    matrix = (u / np.sqrt(s)) @ u.T
    inverse = (u * np.sqrt(s)) @ u.T
    return Zca(mean.astype(np.float32), matrix.astype(np.float32), inverse.astype(np.float32))
