"""Progressive distillation (Salimans & Ho 2022) in TrigFlow time.

A student takes one DDIM step where the teacher takes two. With ``alpha_t = cos t`` and
``sigma_t = sin t`` (TrigFlow's ``x_t = cos t x0 + sin t z``), DDIM's deterministic step from
``x_t`` with a clean-sample estimate ``x0_hat`` is

    x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t.

Two teacher steps ``t -> t' -> t''`` give ``x_t''``; the student's target ``x0~`` is the
estimate with which one step ``t -> t''`` lands on the same point:

    x0~ = (x_t'' - (sigma_t'' / sigma_t) x_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

and the loss is the card's ``max(|x0 - x0~|^2, |eps - eps~|^2)`` (per example, mean over
coordinates), with ``eps`` the noise implied by an estimate, ``(x_t - alpha_t x0) / sigma_t``
(in units of sigma_d). Repeating with the student as the next teacher halves the step count
each round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.diffusion.trigflow import VelocityFn, bcast_time, consistency_fn

__all__ = ["ddim_step", "progressive_loss", "progressive_target"]


def ddim_step(x_t: jax.Array, x0_hat: jax.Array, t: jax.Array, s: jax.Array) -> jax.Array:
    """DDIM's deterministic step from ``t`` to ``s`` with clean estimate ``x0_hat``."""
    a_t, s_t = jnp.cos(bcast_time(t, x_t)), jnp.sin(bcast_time(t, x_t))
    a_s, s_s = jnp.cos(bcast_time(s, x_t)), jnp.sin(bcast_time(s, x_t))
    return a_s * x0_hat + s_s * (x_t - a_t * x0_hat) / s_t


def progressive_target(teacher: VelocityFn, x_t: jax.Array, t: jax.Array, t_mid: jax.Array,
                       t_next: jax.Array, sigma_d: float) -> jax.Array:
    """The student's clean-sample target ``x0~`` for one step ``t -> t_next`` (``t_next > 0``),
    from two teacher DDIM steps through ``t_mid``."""
    x_mid = ddim_step(x_t, consistency_fn(teacher, x_t, t, sigma_d), t, t_mid)
    x_next = ddim_step(x_mid, consistency_fn(teacher, x_mid, t_mid, sigma_d), t_mid, t_next)
    tb, nb = bcast_time(t, x_t), bcast_time(t_next, x_t)
    ratio = jnp.sin(nb) / jnp.sin(tb)
    return (x_next - ratio * x_t) / (jnp.cos(nb) - ratio * jnp.cos(tb))


def progressive_loss(x0_student: jax.Array, x0_target: jax.Array, x_t: jax.Array,
                     t: jax.Array, sigma_d: float) -> jax.Array:
    """``max(mean |x0 - x0~|^2, mean |eps - eps~|^2)`` per example ``[B]`` (eps in units of
    sigma_d); the target is held fixed."""
    x0_target = jax.lax.stop_gradient(x0_target)
    s, a = jnp.sin(bcast_time(t, x_t)), jnp.cos(bcast_time(t, x_t))
    eps = lambda x0: (x_t - a * x0) / (s * sigma_d)
    flat = lambda v: jnp.mean(jnp.square(v).reshape(v.shape[0], -1), axis=-1)
    return jnp.maximum(flat(x0_student - x0_target), flat(eps(x0_student) - eps(x0_target)))
