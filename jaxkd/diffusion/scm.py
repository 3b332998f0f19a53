"""Continuous-time consistency models in TrigFlow: sCD (distillation) and sCT (training).

sCM (Lu & Song 2024) trains ``F_theta`` so that the consistency function
``f(x_t, t) = cos t x_t - sin t sigma_d F_theta(x_t / sigma_d, t)`` is constant along the
probability-flow ODE. Its gradient is that of

    L = E[ e^{w(t)} / D * |F_theta - F_theta^- - g|^2 - w(t) ],

with ``F_theta^-`` the stop-gradient copy of the same network (no EMA target), ``w`` a learned
weighting network and the target direction

    g = -cos^2 t (sigma_d F^- - dx_t/dt) - r (cos t sin t x_t + sigma_d cos t sin t dF^-/dt),
    g <- g / (|g| + c),

where ``dx_t/dt`` is the tangent of the ODE: the teacher's velocity ``sigma_d F_teacher`` (sCD)
or the data velocity ``cos t z - sin t x0`` (sCT); ``r = min(1, step / warmup)`` warms the
tangent term up; ``c = 0.1`` normalises it. The time derivative of the network along the ODE
comes from one forward-mode product,

    cos t sin t dF^-/dt = jvp(F, (x_t / sigma_d, t), (cos t sin t dx_t/dt / sigma_d, cos t sin t)),

computed with ``jax.jvp``. That JVP's primal output *is* ``F_theta``: the loss differentiates
through it, so the network's forward runs once for the value, the tangent and the gradient
(the FLOP floor of 4/3 of a diffusion step for sCT, 5/3 with the teacher's forward for sCD).
Everything in ``g`` is held fixed (stop-gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.diffusion.trigflow import VelocityFn, bcast_time, noisy, sample_time

__all__ = ["ForwardModeError", "jvp", "normalize_tangent", "scm_loss", "scm_terms",
           "tangent_target"]


class ForwardModeError(TypeError):
    """The network has an operation without forward-mode autodiff (a ``custom_vjp``)."""


def jvp(fn: Callable, primals: tuple, tangents: tuple) -> tuple:
    """``jax.jvp``, naming the Flax layer when an operation inside has no forward mode.

    A layer built on a ``jax.custom_vjp`` function (a fused attention kernel, for example) cannot
    be differentiated forward; JAX says only "can't apply forward-mode autodiff (jvp) to a
    custom_vjp function". This raises :class:`ForwardModeError` with the innermost Flax module
    that was running and what to do instead.
    """
    failed: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        try:
            return next_fun(*args, **kwargs)
        except TypeError:
            if not failed and context.method_name == "__call__":
                m = context.module
                failed.append(f"{type(m).__name__} at '{'/'.join(m.path) or '(top)'}'")
            raise

    try:
        with nn.intercept_methods(interceptor):
            return jax.jvp(fn, primals, tangents)
    except TypeError as e:
        if "forward-mode" not in str(e) or "custom_vjp" not in str(e):
            raise
        where = failed[0] if failed else "a function outside any Flax module"
        raise ForwardModeError(
            f"consistency training takes the network's time derivative with jax.jvp, but layer "
            f"{where} runs a jax.custom_vjp function, which has no forward mode ({e}). Use a "
            "version of that layer written with plain jax.numpy ops (e.g. attention as softmax("
            "q k^T / sqrt(d)) v rather than a fused custom_vjp kernel), or give the custom "
            "function a custom_jvp rule") from None


def tangent_target(f_minus: jax.Array, df_dt: jax.Array, dxt_dt: jax.Array, x_t: jax.Array,
                   t: jax.Array, *, sigma_d: float, r: float | jax.Array) -> jax.Array:
    """sCM's unnormalised direction ``g`` (all inputs held fixed).

    Args:
      f_minus: ``[B, ...]`` ``F^-(x_t / sigma_d, t)``.
      df_dt: ``[B, ...]`` ``cos t sin t dF^-/dt`` (the JVP's tangent output).
      dxt_dt: ``[B, ...]`` the ODE tangent at ``x_t``.
      x_t: ``[B, ...]``; ``t``: ``[B]``.
      sigma_d: data scale; ``r``: tangent warm-up factor in ``[0, 1]``.
    """
    c, s = jnp.cos(bcast_time(t, x_t)), jnp.sin(bcast_time(t, x_t))
    return -c * c * (sigma_d * f_minus - dxt_dt) - r * (c * s * x_t + sigma_d * df_dt)


def normalize_tangent(g: jax.Array, c: float = 0.1) -> jax.Array:
    """``g / (|g| + c)`` with the norm per example (over every non-batch axis)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=-1))
    return g / bcast_time(norm + c, g)


def scm_terms(student: VelocityFn, x0: jax.Array, key: jax.Array, *, sigma_d: float,
              p_mean: float, p_std: float, r: float | jax.Array,
              teacher: VelocityFn | None = None, tangent_norm: float = 0.1,
              points: tuple[jax.Array, jax.Array] | None = None) -> dict:
    """The pieces of one sCM estimate on a batch (see the module docstring).

    Args:
      student: ``F_theta`` as a velocity function (gradients flow through its output).
      x0: ``[B, ...]`` clean data (unused with ``points``).
      key: draws ``t`` (lognormal in sigma) and ``z``.
      teacher: ``F_teacher`` for sCD (with guidance folded in, if any); None gives sCT.
      tangent_norm: ``c`` of :func:`normalize_tangent` (0 disables normalisation).
      points: ``(x_t, t)`` to train at instead of noised data (TBCM: points on the teacher's
        own sampling trajectories, no data needed); sCD only.

    Returns:
      dict with ``t [B]``, ``x_t``, ``dxt_dt``, ``F`` (differentiable), ``F_minus``, ``dF_dt``
      (``cos t sin t dF^-/dt``) and ``g`` (normalised), all held fixed except ``F``.
    """
    if points is not None:
        if teacher is None:
            raise ValueError("points on the teacher's trajectories (TBCM) need a teacher (sCD)")
        x_t, t = points
        v_t = None
    else:
        k_t, k_z = jax.random.split(key)
        t = sample_time(k_t, x0.shape[:1], p_mean=p_mean, p_std=p_std, sigma_d=sigma_d)
        z = sigma_d * jax.random.normal(k_z, x0.shape)
        x_t, v_t = noisy(x0, z, t)
    if teacher is None:
        dxt_dt = v_t
    else:
        dxt_dt = jax.lax.stop_gradient(sigma_d * teacher(x_t / sigma_d, t).astype(jnp.float32))
    cs = jnp.cos(t) * jnp.sin(t)
    f, df_dt = jvp(student, (x_t / sigma_d, t), (bcast_time(cs, x_t) * dxt_dt / sigma_d, cs))
    f = f.astype(jnp.float32)
    f_minus, df_dt = jax.lax.stop_gradient(f), jax.lax.stop_gradient(df_dt.astype(jnp.float32))
    g = tangent_target(f_minus, df_dt, dxt_dt, x_t, t, sigma_d=sigma_d, r=r)
    if tangent_norm:
        g = normalize_tangent(g, tangent_norm)
    return {"t": t, "x_t": x_t, "dxt_dt": dxt_dt, "F": f, "F_minus": f_minus, "dF_dt": df_dt,
            "g": jax.lax.stop_gradient(g)}


def scm_loss(student: VelocityFn, weight: Callable[[jax.Array], jax.Array] | None,
             x0: jax.Array, key: jax.Array, **kwargs) -> tuple[jax.Array, dict]:
    """Per-example sCM loss ``e^{w(t)} / D |F - F^- - g|^2 - w(t)`` ``[B]`` and its terms.

    ``weight``: the adaptive weighting ``w(t)`` (``[B] -> [B]``, trainable), or None for
    ``w = 0``. Other arguments as :func:`scm_terms`. At the current parameters ``F - F^-`` is
    zero, so the gradient is ``-2 e^w / D g^T dF/dtheta`` (and ``(e^w |g|^2 / D - 1) dw``).
    """
    terms = scm_terms(student, x0, key, **kwargs)
    d = x0[0].size
    w = jnp.zeros_like(terms["t"]) if weight is None else weight(terms["t"]).astype(jnp.float32)
    diff = terms["F"] - terms["F_minus"] - terms["g"]
    sq = jnp.sum(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)
    return jnp.exp(w) / d * sq - w, {**terms, "w": w}
