"""Toy 2-D distributions with known, normalised densities, for evaluating diffusion samplers.

Each distribution is a frozen (hashable) dataclass following :class:`ToyDistribution`:

* ``sample(key, n) -> [n, 2] float32``: pure JAX.
* ``log_density(x [n, 2]) -> [n] float32``: the normalised log-density (natural log, per unit
  area), exact except for the moons' documented angle quadrature and the checkerboard's floor.
* ``mode_centers() -> np.ndarray [M, 2]`` and ``assign(x [n, 2]) -> [n] int32``: the id in
  ``[0, M)`` of the mode a point belongs to, or -1 when it is far from every mode
  (the rule is documented per distribution).

The methods taking arrays are jitted with the (hashable) distribution and ``n`` static, so each
compiles once per distinct distribution and shape; they can be called inside other jitted code.

Registry: ``DISTRIBUTIONS`` maps ``"ring"``, ``"checkerboard"``, ``"moons"`` to their classes;
``get(name, **fields)`` builds one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ToyDistribution", "Ring", "Checkerboard", "Moons", "DISTRIBUTIONS", "get"]

_LOG_2PI = math.log(2 * math.pi)
_jit_method = functools.partial(jax.jit, static_argnums=0)  # self (a frozen dataclass) is static
_jit_sample = functools.partial(jax.jit, static_argnums=(0, 2))  # self and n


class ToyDistribution(Protocol):
    """What the metrics need from a toy distribution."""

    name: ClassVar[str]

    @property
    def num_modes(self) -> int: ...
    def sample(self, key: jax.Array, n: int) -> jax.Array: ...
    def log_density(self, x: jax.Array) -> jax.Array: ...
    def mode_centers(self) -> np.ndarray: ...
    def assign(self, x: jax.Array) -> jax.Array: ...


def _points(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected points of shape [n, 2], got {x.shape}")
    return x


def _sq_dists(x: jax.Array, centers: jax.Array) -> jax.Array:
    """``[n, K]`` squared distances between ``x [n, 2]`` and ``centers [K, 2]``."""
    return jnp.sum((x[:, None, :] - centers[None, :, :]) ** 2, axis=-1)


@dataclasses.dataclass(frozen=True)
class Ring:
    """Equal mixture of ``num_modes`` isotropic Gaussians on a circle.

    Centre ``k`` is ``radius * (cos 2 pi k / M, sin 2 pi k / M)``; each component has covariance
    ``std**2 I``. With the defaults (M = 8, radius 2, std 0.1) neighbouring centres are
    ``2 r sin(pi / M) = 1.53`` apart, 15 std, so the modes are well separated and the
    entropy is ``log M + log(2 pi e std^2)`` (to float precision).

    ``log p(x) = logsumexp_k(-|x - mu_k|^2 / (2 std^2)) - log M - log(2 pi std^2)``.
    ``assign``: the nearest centre if it is within ``4 std`` (a true sample is further out with
    probability ``exp(-8) = 3.4e-4``), else -1.
    """

    name: ClassVar[str] = "ring"
    num_modes: int = 8
    radius: float = 2.0
    std: float = 0.1

    def mode_centers(self) -> np.ndarray:
        angles = 2 * np.pi * np.arange(self.num_modes) / self.num_modes
        return (self.radius * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)

    @_jit_sample
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_mode, k_noise = jax.random.split(key)
        mode = jax.random.randint(k_mode, (n,), 0, self.num_modes)
        noise = jax.random.normal(k_noise, (n, 2), jnp.float32)
        return jnp.asarray(self.mode_centers())[mode] + self.std * noise

    @_jit_method
    def log_density(self, x: jax.Array) -> jax.Array:
        d2 = _sq_dists(_points(x), jnp.asarray(self.mode_centers()))
        log_norm = math.log(self.num_modes) + _LOG_2PI + 2 * math.log(self.std)
        return jax.nn.logsumexp(-0.5 * d2 / self.std**2, axis=-1) - log_norm

    @_jit_method
    def assign(self, x: jax.Array) -> jax.Array:
        d2 = _sq_dists(_points(x), jnp.asarray(self.mode_centers()))
        near = jnp.min(d2, axis=-1) <= (4 * self.std) ** 2
        return jnp.where(near, jnp.argmin(d2, axis=-1), -1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Checkerboard:
    """Uniform on the dark cells of a ``num_cells`` x ``num_cells`` board over ``[-h, h]^2``.

    With ``h = half_width`` and ``c = 2 h / num_cells``, cell ``(i, j)`` (column ``i`` along x, row
    ``j`` along y, from the bottom-left corner) covers ``[-h + i c, -h + (i + 1) c] x [-h + j c,
    -h + (j + 1) c]``; it is dark when ``i + j`` is even (the bottom-left cell is dark). Defaults:
    a 4x4 board over ``[-2, 2]^2``, 8 dark unit squares, density 1/8 on them. The modes are the
    dark cells, in row-major order of ``(j, i)``; ``assign`` gives the dark cell a point lies in,
    -1 elsewhere.

    ``log p(x) = -log(area of the dark cells)`` inside (-log 8 by default) and
    ``outside_log_density`` elsewhere: a finite floor rather than -inf, so that averages stay
    finite. It is a score, not a density (it does not integrate to 1). The mean log-density of a
    sample set is then ``-log 8 - f (-outside_log_density - log 8)`` (``-2.08 - 7.92 f`` by
    default) with ``f`` the fraction of points outside: a linear penalty on misplaced mass.
    """

    name: ClassVar[str] = "checkerboard"
    num_cells: int = 4
    half_width: float = 2.0
    outside_log_density: float = -10.0

    @property
    def cell(self) -> float:
        return 2 * self.half_width / self.num_cells

    def _dark_cells(self) -> np.ndarray:
        """``[M, 2]`` integer ``(i, j)`` of the dark cells, row-major in ``(j, i)``."""
        j, i = np.divmod(np.arange(self.num_cells**2), self.num_cells)
        dark = (i + j) % 2 == 0
        return np.stack([i[dark], j[dark]], -1)

    @property
    def num_modes(self) -> int:
        return len(self._dark_cells())

    def mode_centers(self) -> np.ndarray:
        return (-self.half_width + (self._dark_cells() + 0.5) * self.cell).astype(np.float32)

    @_jit_sample
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_cell, k_pos = jax.random.split(key)
        cell = jax.random.randint(k_cell, (n,), 0, self.num_modes)
        u = jax.random.uniform(k_pos, (n, 2), jnp.float32)
        corner = jnp.asarray(self._dark_cells(), jnp.float32)[cell]  # [n, 2] cell (i, j)
        return -self.half_width + (corner + u) * self.cell

    @_jit_method
    def assign(self, x: jax.Array) -> jax.Array:
        ij = jnp.floor((_points(x) + self.half_width) / self.cell).astype(jnp.int32)
        on_board = jnp.all((ij >= 0) & (ij < self.num_cells), axis=-1)
        table = np.full((self.num_cells, self.num_cells), -1, np.int32)  # [i, j] -> mode id
        cells = self._dark_cells()
        table[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        ij = jnp.clip(ij, 0, self.num_cells - 1)
        return jnp.where(on_board, jnp.asarray(table)[ij[:, 0], ij[:, 1]], -1)

    @_jit_method
    def log_density(self, x: jax.Array) -> jax.Array:
        inside = -math.log(self.num_modes * self.cell**2)
        return jnp.where(self.assign(x) >= 0, inside, self.outside_log_density).astype(jnp.float32)


# Two moons in sklearn's ``make_moons`` geometry: arc k = centre_k + (cos t, sin t),
# t in [start_k, start_k + pi]; upper arc centre (0, 0) from 0, lower arc centre (1, 0.5) from pi.
_MOON_CENTRES = np.array([[0.0, 0.0], [1.0, 0.5]])
_MOON_STARTS = np.array([0.0, np.pi])
# Noiseless arcs have mean (1/2, 1/4) and coordinate variances 3/4 and 9/16 - 1/pi; MOON_SCALE
# makes the average of the two 1: x_out = MOON_SCALE * (x_sklearn - MOON_MEAN) (then + noise).
MOON_MEAN = np.array([0.5, 0.25])
MOON_SCALE = 1.0 / math.sqrt((0.75 + 0.5625 - 1 / math.pi) / 2)  # = 1.41837


@dataclasses.dataclass(frozen=True)
class Moons:
    """Two moons: a uniform angle on one of two half-circle arcs (equal odds), plus Gaussian noise.

    Geometry: sklearn's ``make_moons`` arcs (upper: centre (0, 0), angles [0, pi]; lower: centre
    (1, 0.5), angles [pi, 2 pi]; radius 1) mapped by ``a -> MOON_SCALE * (a - (0.5, 0.25))`` with
    ``MOON_SCALE = 1 / sqrt((21/16 - 1/pi) / 2) = 1.41837``, so the noiseless arcs have mean 0 and
    average coordinate variance 1 (x: 1.509, y: 0.491; one scale for both axes keeps the arcs
    circular). Then isotropic noise of std ``sigma`` is added in these output units (the arcs have
    radius 1.418 and are 0.709 apart where closest).

    ``p(x) = 1/2 sum_k (1/pi) int_{arc k} N(x; a_k(t), sigma^2 I) dt``, computed with
    ``num_nodes``-point Gauss-Legendre quadrature in ``t`` on each arc, in log space. For
    ``sigma >= 0.05`` the default 256 nodes (128 suffice; 64 do not at 0.05) agree with adaptive
    float64 quadrature (``scipy.integrate.quad``) to 1e-5 in ``log p`` wherever ``log p > -50`` in
    ``[-4, 4]^2``, and to 3e-6 of ``|log p|`` farther out (float32 rounding). A much smaller
    ``sigma`` needs more nodes (the integrand's angular width is ~``sigma / 1.4``).

    Modes: the two moons (upper = 0, lower = 1). ``assign``: the nearest arc if its (exact,
    closed-form) distance is at most ``4 sigma``, else -1.
    """

    name: ClassVar[str] = "moons"
    sigma: float = 0.1
    num_nodes: int = 256
    num_modes: ClassVar[int] = 2

    @staticmethod
    def arc_points(k: int, t: np.ndarray) -> np.ndarray:
        """Noiseless points ``[..., 2]`` of arc ``k`` at angles ``t [...]``, in output units."""
        t = np.asarray(t, np.float64)
        circle = np.stack([np.cos(t), np.sin(t)], -1)
        return MOON_SCALE * (_MOON_CENTRES[k] + circle - MOON_MEAN)

    def mode_centers(self) -> np.ndarray:
        """The arcs' midpoints, ``[2, 2]``."""
        mid = _MOON_STARTS + np.pi / 2
        return np.stack([self.arc_points(k, mid[k]) for k in range(2)]).astype(np.float32)

    @_jit_sample
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_arc, k_t, k_noise = jax.random.split(key, 3)
        arc = jax.random.randint(k_arc, (n,), 0, 2)
        t = jnp.asarray(_MOON_STARTS, jnp.float32)[arc] + jnp.pi * jax.random.uniform(k_t, (n,))
        centre = jnp.asarray(MOON_SCALE * (_MOON_CENTRES - MOON_MEAN), jnp.float32)[arc]
        clean = centre + MOON_SCALE * jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
        return clean + self.sigma * jax.random.normal(k_noise, (n, 2), jnp.float32)

    @_jit_method
    def log_density(self, x: jax.Array) -> jax.Array:
        # int_{s}^{s+pi} f(t) dt ~= pi/2 sum_i w_i f(s + pi (z_i + 1) / 2), so with the 1/2 * 1/pi
        # prefactor p(x) ~= 1/4 sum_{k,i} w_i N(x; a_k(t_ki), sigma^2 I).
        z, w = np.polynomial.legendre.leggauss(self.num_nodes)
        t = _MOON_STARTS[:, None] + np.pi * (z[None, :] + 1) / 2  # [2, nodes]
        nodes = np.concatenate([self.arc_points(k, t[k]) for k in range(2)])  # [2 * nodes, 2]
        log_w = jnp.asarray(np.log(np.concatenate([w, w])), jnp.float32)
        d2 = _sq_dists(_points(x), jnp.asarray(nodes, jnp.float32))  # [n, 2 * nodes]
        log_norm = math.log(4) + _LOG_2PI + 2 * math.log(self.sigma)
        return jax.nn.logsumexp(log_w - 0.5 * d2 / self.sigma**2, axis=-1) - log_norm

    @_jit_method
    def arc_distance(self, x: jax.Array) -> jax.Array:
        """``[n, 2]`` exact Euclidean distance from each point to each (noiseless) arc."""
        x = _points(x)
        out = []
        for k in range(2):
            rel = x - jnp.asarray(MOON_SCALE * (_MOON_CENTRES[k] - MOON_MEAN), jnp.float32)
            rho = jnp.linalg.norm(rel, axis=-1)
            angle = jnp.arctan2(rel[:, 1], rel[:, 0]) - _MOON_STARTS[k]
            on_arc = jnp.mod(angle, 2 * jnp.pi) <= jnp.pi  # else the nearest point is an end
            ends = self.arc_points(k, _MOON_STARTS[k] + np.array([0, np.pi]))  # [2, 2]
            to_end = jnp.min(jnp.sqrt(_sq_dists(x, jnp.asarray(ends, jnp.float32))), axis=-1)
            out.append(jnp.where(on_arc, jnp.abs(rho - MOON_SCALE), to_end))
        return jnp.stack(out, -1)

    @_jit_method
    def assign(self, x: jax.Array) -> jax.Array:
        d = self.arc_distance(x)
        near = jnp.min(d, axis=-1) <= 4 * self.sigma
        return jnp.where(near, jnp.argmin(d, axis=-1), -1).astype(jnp.int32)


DISTRIBUTIONS: dict[str, type] = {"ring": Ring, "checkerboard": Checkerboard, "moons": Moons}


def get(name: str, **fields) -> ToyDistribution:
    """Builds the registered distribution ``name`` with its dataclass ``fields`` overridden."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown toy distribution {name!r}; valid: {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name](**fields)
