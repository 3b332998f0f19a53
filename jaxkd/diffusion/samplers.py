"""Samplers in TrigFlow time: the teacher's probability-flow ODE and few-step consistency sampling.

The ODE is ``dx_t/dt = sigma_d F(x_t / sigma_d, t)`` from ``t_max`` (noise) down to 0. With
``N`` steps on the time grid ``t_0 > t_1 > ... > t_N = 0``:

- ``euler``: ``x <- x - (t_i - t_{i+1}) sigma_d F(x, t_i)`` (``N`` network evaluations).
- ``heun``: Euler, then the trapezoidal correction with the slope at ``t_{i+1}`` (EDM's second
  order step; the last step to ``t = 0`` stays Euler): ``2N - 1`` evaluations.
- ``ddim``: the exact step of TrigFlow for a constant ``F``: the implied clean sample and
  noise ``x0 = cos t x - sin t sigma_d F``, ``z = sin t x + cos t sigma_d F`` are re-mixed at
  the next time, ``x <- cos t' x0 + sin t' z`` (DDIM's deterministic update); ``N`` evaluations.

The time grid is EDM's (Karras et al. 2022) in noise level, ``sigma_i`` from ``sigma_max`` to
``sigma_min`` spaced uniformly in ``sigma^(1/rho)``, mapped to ``t = arctan(sigma / sigma_d)``,
then ``t_N = 0``. Sampling starts from ``x = z ~ N(0, sigma_d^2 I)`` at ``t_0`` (at
``sigma_max = 80`` the data's weight ``cos t_0`` is below 1%).

Consistency models sample in one step, ``x0 = f(z, t_0)``, or in a few: after each step the
estimate is noised again to the next time of ``times`` (``x_t = cos t x0 + sin t z'``).

A velocity function may fold in classifier-free guidance: :func:`guided`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.diffusion.trigflow import VelocityFn, consistency_fn, time_of

__all__ = ["METHODS", "consistency_sample", "guided", "karras_times", "ode_sample", "t_max"]

METHODS = ("euler", "heun", "ddim")


def karras_times(num_steps: int, sigma_d: float, *, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """``[num_steps + 1]`` float32 TrigFlow times, decreasing, the last one 0."""
    if num_steps < 1:
        raise ValueError(f"a sampler needs at least one step, got num_steps={num_steps}")
    i = np.arange(num_steps, dtype=np.float64)
    inv = 1.0 / rho
    if num_steps == 1:
        sigmas = np.array([sigma_max])
    else:
        sigmas = (sigma_max ** inv + i / (num_steps - 1) * (sigma_min ** inv - sigma_max ** inv)
                  ) ** rho
    t = np.arctan(sigmas / sigma_d)
    return np.append(t, 0.0).astype(np.float32)


def guided(cond: VelocityFn, uncond: VelocityFn, scale: float | jax.Array) -> VelocityFn:
    """Classifier-free guidance ``F_u + scale (F_c - F_u)`` (scale 1 = conditional; Meng et al.'s
    ``(1 + w) F_c - w F_u`` is ``scale = 1 + w``). ``scale``: a number or one per example
    ``[B]``."""

    def fn(x, t):
        f_c, f_u = cond(x, t), uncond(x, t)
        w = jnp.asarray(scale, jnp.float32)
        w = jnp.reshape(w, w.shape + (1,) * (f_c.ndim - w.ndim)) if w.ndim else w
        return f_u + w * (f_c - f_u)

    return fn


def _full(t: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.full(x.shape[:1], t, jnp.float32)


def ode_sample(fn: VelocityFn, z: jax.Array, times: np.ndarray | jax.Array, *,
               sigma_d: float, method: str = "euler") -> jax.Array:
    """Integrates the probability-flow ODE from ``z`` (std ``sigma_d``) over ``times``.

    Args:
      fn: the velocity function ``F(x / sigma_d, t)``.
      z: ``[B, ...]`` the starting noise.
      times: decreasing ``[N + 1]`` times ending at 0 (e.g. :func:`karras_times`).
      method: ``euler``, ``heun`` or ``ddim``.

    Returns:
      ``[B, ...]`` samples at ``t = 0``. Jit-able (the step count is the shape of ``times``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(METHODS)}")
    times = jnp.asarray(times, jnp.float32)
    slope = lambda x, t: sigma_d * fn(x / sigma_d, _full(t, x))

    def step(x, pair):
        t, t_next = pair
        if method == "ddim":
            f = sigma_d * fn(x / sigma_d, _full(t, x))
            x0 = jnp.cos(t) * x - jnp.sin(t) * f
            noise = jnp.sin(t) * x + jnp.cos(t) * f
            return jnp.cos(t_next) * x0 + jnp.sin(t_next) * noise, None
        d = slope(x, t)
        x_next = x - (t - t_next) * d
        if method == "heun":
            corrected = x - (t - t_next) * 0.5 * (d + slope(x_next, t_next))
            x_next = jnp.where(t_next > 0, corrected, x_next)
        return x_next, None

    x, _ = jax.lax.scan(step, z, (times[:-1], times[1:]))
    return x


def consistency_sample(fn: VelocityFn, z: jax.Array, times: np.ndarray | jax.Array,
                       key: jax.Array, *, sigma_d: float) -> jax.Array:
    """Few-step consistency sampling: ``x0 = f(x, t_0)``, then noise to ``t_i`` and repeat.

    Args:
      fn: the consistency model's velocity function.
      z: ``[B, ...]`` noise with std ``sigma_d`` (the start at ``times[0]``).
      times: ``[S]`` decreasing times, one per step (e.g. ``[t_max]`` for one step,
        ``[t_max, 1.1]`` for two: sCM's choice).
      key: the fresh noise of steps 2..S.
    """
    times = [float(t) for t in np.asarray(times)]
    x0 = consistency_fn(fn, z, _full(times[0], z), sigma_d)
    for i, t in enumerate(times[1:]):
        noise = sigma_d * jax.random.normal(jax.random.fold_in(key, i), z.shape)
        x_t = jnp.cos(t) * x0 + jnp.sin(t) * noise
        x0 = consistency_fn(fn, x_t, _full(t, z), sigma_d)
    return x0


def t_max(sigma_d: float, sigma_max: float = 80.0) -> float:
    """The starting time of sampling, ``arctan(sigma_max / sigma_d)``."""
    return float(time_of(np.float32(sigma_max), sigma_d))
