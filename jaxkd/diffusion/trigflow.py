"""TrigFlow (Lu & Song 2024): the diffusion parameterisation behind continuous-time consistency.

Data ``x0`` with per-coordinate scale ``sigma_d``, noise ``z ~ N(0, sigma_d^2 I)`` and time
``t in [0, pi/2]``:

    x_t = cos(t) x0 + sin(t) z,        v_t = dx_t/dt = cos(t) z - sin(t) x0.

A network ``F_theta(x_t / sigma_d, t)`` predicts the velocity in units of ``sigma_d``: the
diffusion (flow-matching) loss is ``|sigma_d F - v_t|^2``. Its probability-flow ODE is
``dx_t/dt = sigma_d F(x_t / sigma_d, t)``, and the consistency function (the ``x0`` it implies)
is

    f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t).

The time input of every network is ``c_noise = t`` itself (sCM's recommendation, not
``log sigma``); the EDM noise level of ``t`` is ``sigma = sigma_d tan t``. Training times are
drawn as ``log(sigma_d tan t) ~ N(p_mean, p_std^2)``.

Every function takes the network as ``fn(x_scaled [B, ...], t [B]) -> F [B, ...]`` (a closure
over its parameters and conditioning), so the same code serves the MLP, the UNet, a teacher
with classifier-free guidance and the JVP of sCM.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["VelocityFn", "bcast_time", "consistency_fn", "diffusion_loss", "noisy",
           "sample_time", "sigma_of", "time_of", "velocity"]

# F(x_t / sigma_d, t) -> the network's velocity prediction, in units of sigma_d.
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def bcast_time(t: jax.Array, x: jax.Array) -> jax.Array:
    """``t [B]`` reshaped to broadcast against ``x [B, ...]``."""
    return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def sigma_of(t: jax.Array, sigma_d: float) -> jax.Array:
    """The EDM noise level ``sigma_d tan t`` of TrigFlow time ``t``."""
    return sigma_d * jnp.tan(t)


def time_of(sigma: jax.Array, sigma_d: float) -> jax.Array:
    """The TrigFlow time ``arctan(sigma / sigma_d)`` of EDM noise level ``sigma``."""
    return jnp.arctan(sigma / sigma_d)


def sample_time(key: jax.Array, shape: tuple[int, ...], *, p_mean: float, p_std: float,
                sigma_d: float) -> jax.Array:
    """Training times ``t = arctan(exp(p_mean + p_std n) / sigma_d)``, ``n ~ N(0, 1)``."""
    return jnp.arctan(jnp.exp(p_mean + p_std * jax.random.normal(key, shape)) / sigma_d)


def noisy(x0: jax.Array, z: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x_t, v_t)``: the noised point and its velocity ``dx_t/dt`` (``z`` has std sigma_d)."""
    c, s = jnp.cos(bcast_time(t, x0)), jnp.sin(bcast_time(t, x0))
    return c * x0 + s * z, c * z - s * x0


def velocity(fn: VelocityFn, x_t: jax.Array, t: jax.Array, sigma_d: float) -> jax.Array:
    """The probability-flow ODE's ``dx_t/dt = sigma_d F(x_t / sigma_d, t)``."""
    return sigma_d * fn(x_t / sigma_d, t)


def consistency_fn(fn: VelocityFn, x_t: jax.Array, t: jax.Array, sigma_d: float) -> jax.Array:
    """``f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t)``: the implied clean sample."""
    c, s = jnp.cos(bcast_time(t, x_t)), jnp.sin(bcast_time(t, x_t))
    return c * x_t - s * sigma_d * fn(x_t / sigma_d, t)


def diffusion_loss(fn: VelocityFn, x0: jax.Array, key: jax.Array, *, sigma_d: float,
                   p_mean: float, p_std: float) -> jax.Array:
    """Per-example TrigFlow diffusion loss ``|sigma_d F(x_t / sigma_d, t) - v_t|^2 / D``.

    Args:
      fn: the network's velocity function.
      x0: ``[B, ...]`` clean data (already in the units whose scale is ``sigma_d``).
      key: draws ``t`` (lognormal in ``sigma``) and ``z ~ N(0, sigma_d^2)``.

    Returns:
      ``[B]`` float32: the mean over coordinates of the squared velocity error.
    """
    k_t, k_z = jax.random.split(key)
    t = sample_time(k_t, x0.shape[:1], p_mean=p_mean, p_std=p_std, sigma_d=sigma_d)
    z = sigma_d * jax.random.normal(k_z, x0.shape)
    x_t, v_t = noisy(x0, z, t)
    err = sigma_d * fn(x_t / sigma_d, t).astype(jnp.float32) - v_t
    return jnp.mean(jnp.square(err).reshape(x0.shape[0], -1), axis=-1)
