"""Distribution matching distillation (DMD / DMD2) pieces, used by rCM's regulariser.

For a generator sample ``x0`` noised to ``x_t = cos t x0 + sin t z``, the teacher ("real
score") and a fake-score network trained on the generator's own samples each predict the clean
sample, ``f_real`` and ``f_fake`` (TrigFlow's consistency function of their velocities). The
distribution-matching gradient on ``x0`` is

    grad = (f_fake - f_real) / mean_d |x0 - f_real|,

(the normaliser is per example, over its coordinates), applied through the surrogate loss

    L = 1/2 mean_d (x0 - sg(x0 - grad))^2,     dL/dx0 = grad / D,

so that the generator moves its samples towards where the teacher, and away from where the fake
score, puts the clean data. The fake network learns the diffusion loss on ``sg(x0)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dmd_direction", "dmd_loss"]


def dmd_direction(x0: jax.Array, f_real: jax.Array, f_fake: jax.Array,
                  eps: float = 1e-6) -> jax.Array:
    """``(f_fake - f_real) / mean_d |x0 - f_real|`` per example; ``[B, ...]`` float32."""
    x0, f_real, f_fake = (a.astype(jnp.float32) for a in (x0, f_real, f_fake))
    scale = jnp.mean(jnp.abs(x0 - f_real).reshape(x0.shape[0], -1), axis=-1)
    return (f_fake - f_real) / (scale.reshape((-1,) + (1,) * (x0.ndim - 1)) + eps)


def dmd_loss(x0: jax.Array, f_real: jax.Array, f_fake: jax.Array) -> jax.Array:
    """Per-example surrogate ``1/2 mean_d (x0 - sg(x0 - grad))^2`` ``[B]``; gradient only
    through ``x0`` (the teacher's and the fake network's predictions are held fixed)."""
    grad = jax.lax.stop_gradient(dmd_direction(x0, f_real, f_fake))
    target = jax.lax.stop_gradient(x0.astype(jnp.float32) - grad)
    diff = x0.astype(jnp.float32) - target
    return 0.5 * jnp.mean(jnp.square(diff).reshape(x0.shape[0], -1), axis=-1)
