"""Discrete-time consistency distillation and training (Song et al. 2023; iCT, Song & Dhariwal
2023), in TrigFlow time.

On a grid of ``N + 1`` noise levels ``sigma_min = s_0 < ... < s_N = sigma_max`` (Karras,
``rho = 7``; times ``t_i = arctan(s_i / sigma_d)``), a pair of neighbouring times ``t_n <
t_{n+1}`` is drawn and the model's consistency function at the later time is pulled towards its
stop-gradient value at the earlier one:

    L = lambda_n d(f_theta(x_{t_{n+1}}, t_{n+1}), sg f_theta(x^_{t_n}, t_n)),

- **CD**: ``x^_{t_n}`` is one teacher ODE step (Euler on TrigFlow's ``dx/dt = sigma_d F``)
  from ``x_{t_{n+1}} = cos t x0 + sin t z``;
- **CT**: ``x^_{t_n} = cos t_n x0 + sin t_n z`` with the same ``x0`` and ``z`` (no teacher).

iCT's improvements, used here: ``d`` is the pseudo-Huber distance ``sqrt(|a - b|^2 + c^2) - c``
with ``c = 0.00054 sqrt(D)``; the weighting ``lambda_n = 1 / (s_{n+1} - s_n)``; the index ``n``
is drawn with probability proportional to ``erf((log s_{n+1} - P_mean) / (sqrt 2 P_std)) -
erf((log s_n - P_mean) / (sqrt 2 P_std))`` (lognormal in sigma); the target network is the
model itself (stop-gradient, no EMA); and ``N`` follows a curriculum, doubling from ``s0`` to
``s1`` over training, ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with ``K' = K /
(log2(s1 / s0) + 1)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.diffusion.trigflow import VelocityFn, bcast_time, consistency_fn, time_of

__all__ = ["curriculum_steps", "discrete_cm_loss", "karras_sigmas", "pseudo_huber",
           "sample_index"]


def karras_sigmas(n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> np.ndarray:
    """``[n + 1]`` increasing noise levels from ``sigma_min`` to ``sigma_max``."""
    i = np.arange(n + 1, dtype=np.float64) / n
    return (sigma_min ** (1 / rho) + i * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def curriculum_steps(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's discretisation ``N`` at training step ``step`` of ``total`` (doubling s0 -> s1)."""
    k_prime = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(step / max(k_prime, 1)), s1)


def pseudo_huber(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sqrt(|a - b|^2 + c^2) - c`` per example, ``c = 0.00054 sqrt(D)``; ``[B]``."""
    d = a[0].size
    c = 0.00054 * math.sqrt(d)
    sq = jnp.sum(jnp.square((a - b).astype(jnp.float32)).reshape(a.shape[0], -1), axis=-1)
    return jnp.sqrt(sq + c * c) - c


def sample_index(key: jax.Array, sigmas: jax.Array, shape: tuple[int, ...], *,
                 p_mean: float, p_std: float) -> jax.Array:
    """Indices ``n`` in ``[0, N)`` of the pair ``(s_n, s_{n+1})``, lognormal-weighted."""
    lo, hi = jnp.log(sigmas[:-1]), jnp.log(sigmas[1:])
    s2 = math.sqrt(2.0) * p_std
    w = jax.scipy.special.erf((hi - p_mean) / s2) - jax.scipy.special.erf((lo - p_mean) / s2)
    return jax.random.categorical(key, jnp.log(jnp.maximum(w, 1e-20)), shape=shape)


def discrete_cm_loss(model: VelocityFn, x0: jax.Array, key: jax.Array, sigmas: jax.Array, *,
                     sigma_d: float, p_mean: float, p_std: float,
                     teacher: VelocityFn | None = None) -> jax.Array:
    """Per-example iCT/CD loss ``lambda_n d(f(x_{t_{n+1}}), sg f(x^_{t_n}))`` ``[B]``.

    Args:
      model: the consistency model's velocity function (gradients flow through it).
      x0: ``[B, ...]`` clean data; ``key``: draws ``n`` and ``z``.
      sigmas: ``[N + 1]`` increasing noise levels (:func:`karras_sigmas`).
      teacher: the diffusion teacher for CD (one Euler ODE step); None gives CT.
    """
    k_n, k_z = jax.random.split(key)
    b = x0.shape[0]
    n = sample_index(k_n, sigmas, (b,), p_mean=p_mean, p_std=p_std)
    t_lo, t_hi = time_of(sigmas[n], sigma_d), time_of(sigmas[n + 1], sigma_d)
    z = sigma_d * jax.random.normal(k_z, x0.shape)
    x_hi = jnp.cos(bcast_time(t_hi, x0)) * x0 + jnp.sin(bcast_time(t_hi, x0)) * z
    if teacher is None:
        x_lo = jnp.cos(bcast_time(t_lo, x0)) * x0 + jnp.sin(bcast_time(t_lo, x0)) * z
    else:
        slope = sigma_d * teacher(x_hi / sigma_d, t_hi)
        x_lo = jax.lax.stop_gradient(x_hi - bcast_time(t_hi - t_lo, x0) * slope)
    target = jax.lax.stop_gradient(consistency_fn(model, x_lo, t_lo, sigma_d))
    pred = consistency_fn(model, x_hi, t_hi, sigma_d)
    weight = 1.0 / (sigmas[n + 1] - sigmas[n])
    return weight * pseudo_huber(pred, target)
