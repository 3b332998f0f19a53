"""Pseudo-subclass distillation for few-class problems (LELP, Loo et al. 2024): pure functions.

A student for a ``C``-class problem gets a head over ``C * S`` pseudo-subclasses, laid out
class-major: output ``c * S + j`` is pseudo-subclass ``j`` of class ``c``. It is trained towards
soft pseudo-subclass targets built from the teacher, and predicts a class by summing the
probabilities of that class's pseudo-subclasses (:func:`aggregate_log_probs`).

Targets factorise as ``p(c, j | x) = p_T(c | x) * p(j | c, x)``
(:func:`pseudo_subclass_log_targets`): the teacher's (softened) class probability times a
within-class split computed from the teacher's embedding (``jaxkd.kd.few_class`` builds the
split logits). Summing the targets over ``j`` gives back exactly the teacher's class
probabilities, so the pseudo-subclasses only *add* information.

Everything is computed in float32; masks select the examples that count, and an all-zero mask
gives exactly 0.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxkd.losses.kd import hinton_kd_loss, softmax_cross_entropy


def _split_classes(logits: jax.Array, num_classes: int) -> jax.Array:
    """``[..., C * S]`` -> ``[..., C, S]`` (class-major), checking that ``C`` divides the width."""
    width = logits.shape[-1]
    if num_classes < 1 or width % num_classes:
        raise ValueError(f"{width} outputs cannot be split into {num_classes} classes")
    return logits.reshape(*logits.shape[:-1], num_classes, width // num_classes)


def aggregate_log_probs(logits: jax.Array, num_classes: int) -> jax.Array:
    """Class log-probabilities ``log sum_j softmax(logits)[c * S + j]``, shape ``[..., C]``.

    Args:
      logits: ``[..., C * S]`` pseudo-subclass logits, class-major.
      num_classes: ``C``.

    Returns:
      float32 ``[..., C]``; ``exp`` of it sums to 1 over the last axis. As logits (argmax,
      ``log_softmax``) they are the aggregated classifier.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jax.nn.logsumexp(_split_classes(log_p, num_classes), axis=-1)


def pseudo_subclass_log_targets(
    teacher_logits: jax.Array, split_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
    """``log p(c, j | x) = log_softmax(t / T)_c + log_softmax(split_logits[c])_j``, class-major.

    Args:
      teacher_logits: ``[..., C]`` the teacher's class logits.
      split_logits: ``[..., C, S]`` within-class pseudo-subclass logits (already divided by
        their own temperature); row ``c`` splits class ``c``.
      temperature: ``T > 0`` softening the teacher's class probabilities (as in Hinton KD).

    Returns:
      float32 ``[..., C * S]`` log-probabilities (finite: no entry is exactly zero).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chex.assert_rank(split_logits, teacher_logits.ndim + 1)
    chex.assert_equal_shape_prefix([teacher_logits, split_logits], teacher_logits.ndim)
    log_class = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_within = jax.nn.log_softmax(split_logits.astype(jnp.float32), axis=-1)
    out = log_class[..., None] + log_within
    return out.reshape(*out.shape[:-2], -1)


def lelp_loss(
    student_logits: jax.Array,
    log_targets: jax.Array,
    *,
    temperature: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``T^2 * KL(p || softmax(s / T))`` over the ``C * S`` pseudo-subclasses, masked mean.

    Args:
      student_logits: ``[B, C * S]`` the student's pseudo-subclass logits.
      log_targets: ``[B, C * S]`` target log-probabilities (e.g. from
        :func:`pseudo_subclass_log_targets`; ``-inf`` allowed for impossible entries, as in a
        one-hot oracle target). Treated as constants.
      temperature: ``T > 0``; the student's logits are divided by it, the loss multiplied by
        ``T^2`` (Hinton's scaling). Use the temperature the targets' class part was built with.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chex.assert_equal_shape([student_logits, log_targets])
    # softmax(T * log p / T) = p, so Hinton's T^2 KL(softmax(t / T) || softmax(s / T)) with
    # t = T * log p is exactly this loss (and it already maps 0 * log 0 to 0).
    return hinton_kd_loss(student_logits, temperature * log_targets.astype(jnp.float32),
                          temperature=temperature, mask=mask)


def lelp_objective(
    student_logits: jax.Array,
    log_targets: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    temperature: float = 1.0,
    alpha: float = 1.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(1 - alpha) * CE(y, aggregated) + alpha * lelp_loss``, the repository's KD convention.

    The cross-entropy is on the aggregated class probabilities (:func:`aggregate_log_probs`,
    temperature 1) against the integer class ``labels [B]``; ``alpha = 1`` is pure distillation
    (the paper's setting).

    Returns:
      ``(loss, {"ce": ..., "lelp": ...})``, float32 scalars.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ce = softmax_cross_entropy(aggregate_log_probs(student_logits, num_classes), labels, mask=mask)
    kd = lelp_loss(student_logits, log_targets, temperature=temperature, mask=mask)
    return (1.0 - alpha) * ce + alpha * kd, {"ce": ce, "lelp": kd}
