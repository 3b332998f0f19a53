"""Logit-level knowledge distillation losses (pure functions).

Every function takes arrays and returns arrays; nothing here knows about models, optimisers or
sharding. Inputs may be any float dtype; all arithmetic is done in float32. Masks select the
examples that count; an all-zero mask gives a loss of exactly 0 (never NaN).

Shapes: ``logits`` are ``[..., C]`` (a batch ``[B, C]`` or tokens ``[B, T, C]``); ``labels`` are
integer class ids of shape ``logits.shape[:-1]``; ``mask`` is broadcastable to ``logits.shape[:-1]``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``values`` over the entries where ``mask`` is non-zero; 0 when the mask is empty."""
    values = values.astype(jnp.float32)
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(mask.astype(jnp.float32), values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of integer ``labels`` under ``softmax(logits)``.

    Args:
      logits: ``[..., C]`` float.
      labels: ``[...]`` integer class ids in ``[0, C)``.
      mask: optional ``[...]`` weights (1 = counts, 0 = ignored, e.g. eval padding).

    Returns:
      scalar float32.
    """
    chex.assert_equal_shape_prefix([logits, labels], labels.ndim)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _masked_mean(nll, mask)


def kl_divergence_with_logits(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    """Per-example ``KL(softmax(t/T) || softmax(s/T))``, shape ``logits.shape[:-1]``, float32.

    Where the teacher probability is exactly 0 the term contributes 0 (``0 log 0 = 0``).
    """
    chex.assert_equal_shape([student_logits, teacher_logits])
    s = student_logits.astype(jnp.float32) / temperature
    t = teacher_logits.astype(jnp.float32) / temperature
    log_q = jax.nn.log_softmax(s, axis=-1)
    log_p = jax.nn.log_softmax(t, axis=-1)
    p = jnp.exp(log_p)
    # p * (log p - log q); with p == 0 the product is 0 even if log p is -inf.
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def hinton_kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 4.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Hinton et al. (2015) soft-target loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` factor keeps the gradient magnitude comparable across temperatures (the gradient of
    the softened KL scales as ``1/T^2``). The teacher logits are treated as constants
    (``stop_gradient``): no gradient flows into a teacher through this loss.

    Args:
      student_logits: ``[..., C]``.
      teacher_logits: ``[..., C]``, same shape.
      temperature: softening temperature ``T > 0``.
      mask: optional ``[...]`` example weights.

    Returns:
      scalar float32, the masked mean over examples.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    kl = kl_divergence_with_logits(student_logits, teacher_logits, temperature=temperature)
    return (temperature**2) * _masked_mean(kl, mask)


def hinton_kd_objective(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The full Hinton KD objective: ``(1 - alpha) * CE(y, s) + alpha * T^2 * KL(t/T || s/T)``.

    ``alpha`` is the weight of the distillation term (0.9 in the CRD/RepDistiller benchmark
    settings, i.e. CE 0.1 / KD 0.9).

    Returns:
      ``(loss, {"ce": ..., "kd": ...})``, all float32 scalars.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ce = softmax_cross_entropy(student_logits, labels, mask=mask)
    kd = hinton_kd_loss(student_logits, teacher_logits, temperature=temperature, mask=mask)
    return (1.0 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}
