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

Score distillation (SDS, VSD) uses the same surrogate with the direction
``w(t) (z_teacher - z_ref) / sigma_d`` in noise space (:func:`score_direction`).

DMD2's optional GAN head classifies noised real data against noised generator samples from the
fake network's bottleneck features; the classifier (head and fake network) learns the logistic
loss :func:`gan_discriminator_loss`, the generator the non-saturating :func:`gan_generator_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.diffusion.trigflow import bcast_time

__all__ = ["dmd_direction", "dmd_loss", "gan_discriminator_loss", "gan_generator_loss",
           "noise_prediction", "score_direction", "surrogate_loss"]


def dmd_direction(x0: jax.Array, f_real: jax.Array, f_fake: jax.Array,
                  eps: float = 1e-6) -> jax.Array:
    """``(f_fake - f_real) / mean_d |x0 - f_real|`` per example; ``[B, ...]`` float32."""
    x0, f_real, f_fake = (a.astype(jnp.float32) for a in (x0, f_real, f_fake))
    scale = jnp.mean(jnp.abs(x0 - f_real).reshape(x0.shape[0], -1), axis=-1)
    return (f_fake - f_real) / (scale.reshape((-1,) + (1,) * (x0.ndim - 1)) + eps)


def surrogate_loss(x0: jax.Array, grad: jax.Array) -> jax.Array:
    """Per-example ``1/2 mean_d (x0 - sg(x0 - grad))^2`` ``[B]``: its gradient in ``x0`` is
    ``grad / D`` (``grad`` held fixed), whatever produced ``x0``."""
    target = jax.lax.stop_gradient(x0.astype(jnp.float32) - jax.lax.stop_gradient(grad))
    diff = x0.astype(jnp.float32) - target
    return 0.5 * jnp.mean(jnp.square(diff).reshape(x0.shape[0], -1), axis=-1)


def dmd_loss(x0: jax.Array, f_real: jax.Array, f_fake: jax.Array) -> jax.Array:
    """Per-example DMD surrogate ``[B]``; gradient only through ``x0`` (the teacher's and the
    fake network's predictions are held fixed)."""
    return surrogate_loss(x0, dmd_direction(x0, f_real, f_fake))


def noise_prediction(velocity: jax.Array, x_t: jax.Array, t: jax.Array,
                     sigma_d: float) -> jax.Array:
    """The noise ``z`` (std sigma_d) a TrigFlow velocity ``F`` implies at ``x_t``:
    ``sin t x_t + cos t sigma_d F``."""
    tb = bcast_time(t, x_t)
    return jnp.sin(tb) * x_t + jnp.cos(tb) * sigma_d * velocity


def score_direction(z_real: jax.Array, z_ref: jax.Array, t: jax.Array, sigma_d: float,
                    weighting: str = "sigma2") -> jax.Array:
    """Score distillation's gradient on a generator sample, ``w(t) (z_real - z_ref) / sigma_d``.

    SDS (DreamFusion): ``z_ref`` is the noise actually added; VSD (ProlificDreamer): the noise a
    score network trained on the generator's own samples predicts. ``z_real`` is the teacher's
    prediction. ``weighting``: ``"sigma2"`` (``w = sin^2 t``, the noise level's square in
    TrigFlow's units) or ``"uniform"`` (``w = 1``).
    """
    tb = bcast_time(t, z_real)
    w = jnp.square(jnp.sin(tb)) if weighting == "sigma2" else jnp.ones_like(tb)
    return w * (z_real - z_ref).astype(jnp.float32) / sigma_d


def gan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """``mean softplus(-D(real)) + mean softplus(D(fake))``: real labelled 1, fake 0."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def gan_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """The non-saturating generator loss ``mean softplus(-D(G(z)))``."""
    return jnp.mean(jax.nn.softplus(-fake_logits))
