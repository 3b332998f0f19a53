"""Logit-level knowledge distillation losses (pure functions).

Every function takes arrays and returns arrays; nothing here knows about models, optimisers or
sharding. Inputs may be any float dtype; all arithmetic is done in float32. Masks select the
examples that count; an all-zero mask gives a loss of exactly 0 (never NaN).

Shapes: ``logits`` are ``[..., C]`` (a batch ``[B, C]`` or tokens ``[B, T, C]``); ``labels`` are
integer class ids of shape ``logits.shape[:-1]``; ``mask`` is broadcastable to ``logits.shape[:-1]``.
Losses with other inputs (CLIP embeddings, DINO views, per-example gradients) document their shapes.
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


# ---------------------------------------------------------------------------------------------
# Shared helpers for the losses below.
# ---------------------------------------------------------------------------------------------

# Fill value for logits outside a softmax's support. Finite (unlike -inf) so that neither the
# forward pass nor any gradient can produce NaN; exp(_EXCLUDED - max) is exactly 0 in float32.
_EXCLUDED = -1e30


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_nonnegative(name: str, value) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_unit_interval(name: str, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(w * v) / sum(w)``; exactly 0 (with finite gradients) when the weights sum to 0."""
    values = values.astype(jnp.float32)
    weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)
    total = jnp.sum(weights)
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def _example_weights(mask: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """The mask as float32 weights of the per-example ``shape`` (all ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    return jnp.broadcast_to(mask.astype(jnp.float32), shape)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 instead of inf (no NaN)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _soft_cross_entropy(
    target_logits: jax.Array, logits: jax.Array, support: jax.Array | None = None
) -> jax.Array:
    """``-sum_c softmax(target)_c * log_softmax(logits)_c`` over the last axis, float32.

    ``support`` (bool, broadcastable to the logits) restricts both softmaxes to the classes where it
    is True; excluded classes get exactly zero target probability and contribute nothing.
    """
    if support is not None:
        target_logits = jnp.where(support, target_logits, _EXCLUDED)
        logits = jnp.where(support, logits, _EXCLUDED)
    p = jax.nn.softmax(target_logits, axis=-1)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(p > 0, p * log_q, 0.0), axis=-1)


def _check_labels(logits: jax.Array, labels: jax.Array | None, name: str) -> jax.Array:
    if labels is None:
        raise ValueError(f"{name} needs labels (integer class ids), got labels=None")
    chex.assert_rank(labels, logits.ndim - 1)
    chex.assert_equal_shape_prefix([logits, labels], labels.ndim)
    return labels.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Decoupled KD (Zhao et al., 2022).
# ---------------------------------------------------------------------------------------------


def _dkd_parts(
    s: jax.Array, t: jax.Array, is_target: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example (TCKD, NCKD) for already temperature-scaled float32 logits ``s``, ``t``."""

    def binary_and_non_target(z):
        lse = jax.nn.logsumexp(z, axis=-1)
        lse_non_target = jax.nn.logsumexp(jnp.where(is_target, _EXCLUDED, z), axis=-1)
        z_target = jnp.sum(jnp.where(is_target, z, 0.0), axis=-1)
        # log p_target and log(1 - p_target), the latter without the cancellation of 1 - p.
        log_b = jnp.stack([z_target - lse, lse_non_target - lse], axis=-1)
        # log of the distribution renormalised over the non-target classes (finite everywhere;
        # the target entry is meaningless and is multiplied by a zero probability below).
        log_hat = z - lse_non_target[..., None]
        return log_b, log_hat

    log_b_s, log_hat_s = binary_and_non_target(s)
    log_b_t, log_hat_t = binary_and_non_target(t)
    b_t = jnp.exp(log_b_t)
    tckd = jnp.sum(jnp.where(b_t > 0, b_t * (log_b_t - log_b_s), 0.0), axis=-1)
    hat_t = jnp.where(is_target, 0.0, jnp.exp(log_hat_t))
    nckd = jnp.sum(jnp.where(hat_t > 0, hat_t * (log_hat_t - log_hat_s), 0.0), axis=-1)
    return tckd, nckd


def dkd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    labels: jax.Array | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    scale: float | jax.Array = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Decoupled KD (Zhao et al., CVPR 2022): ``scale * T^2 * (alpha * TCKD + beta * NCKD)``.

    With ``p = softmax(t/T)`` (teacher), ``q = softmax(s/T)`` (student) and ``y`` the label:

    * TCKD = ``KL([p_y, 1 - p_y] || [q_y, 1 - q_y])``, the binary target/non-target KL;
    * NCKD = ``KL(p_hat || q_hat)`` with ``p_hat_c = p_c / (1 - p_y)`` over the classes ``c != y``.

    Classical KD decomposes per example as ``KL(p || q) = TCKD + (1 - p_y) * NCKD``; DKD replaces
    the teacher-confidence-dependent weight ``1 - p_y`` by the constant ``beta``.

    Both parts are computed exactly: ``log(1 - p_y)`` as ``logsumexp`` over the non-target logits
    minus ``logsumexp`` over all, and the non-target renormalisation by excluding the target logit
    from the softmax support. The reference (mdistiller) subtracts ``1000`` from the scaled target
    logit instead, which agrees to float precision unless ``|logit / T|`` approaches 1000.

    The reference multiplies the loss by a warm-up factor ``min(epoch / 20, 1)``. That is a
    schedule, so it is left to the caller: pass it as ``scale`` (a Python float or a traced scalar),
    e.g. ``scale=jnp.minimum(step / warmup_steps, 1.0)``.

    Args:
      student_logits: ``[..., C]`` (usually ``[B, C]``), ``C >= 2``.
      teacher_logits: ``[..., C]``, same shape; treated as a constant (``stop_gradient``).
      labels: ``[...]`` integer class ids in ``[0, C)``. Required.
      temperature: ``T > 0`` (default 4).
      alpha: weight of TCKD, ``>= 0`` (default 1).
      beta: weight of NCKD, ``>= 0`` (default 8; the paper uses 8 on CIFAR-100, 0.5 on ImageNet).
      scale: multiplies the whole term (warm-up factor); not validated so it may be traced.
      mask: optional ``[...]`` example weights (1 = counts).

    Returns:
      scalar float32, the masked mean over examples.
    """
    _check_positive("temperature", temperature)
    _check_nonnegative("alpha", alpha)
    _check_nonnegative("beta", beta)
    chex.assert_equal_shape([student_logits, teacher_logits])
    labels = _check_labels(student_logits, labels, "dkd_loss")
    num_classes = student_logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes, got logits of shape "
                         f"{student_logits.shape}")
    s = student_logits.astype(jnp.float32) / temperature
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature
    is_target = labels[..., None] == jnp.arange(num_classes)
    tckd, nckd = _dkd_parts(s, t, is_target)
    per_example = alpha * tckd + beta * nckd
    return scale * (temperature**2) * _masked_mean(per_example, mask)


# ---------------------------------------------------------------------------------------------
# DIST (Huang et al., 2022).
# ---------------------------------------------------------------------------------------------


def pearson_correlation(
    x: jax.Array,
    y: jax.Array,
    *,
    axis: int = -1,
    weights: jax.Array | None = None,
    eps: float = 1e-8,
) -> jax.Array:
    """Pearson correlation of ``x`` and ``y`` along ``axis``, float32.

    ``r = sum w xc yc / (sqrt(sum w xc^2) * sqrt(sum w yc^2) + eps)`` with ``xc = x - mean_w(x)``
    (weighted mean). With 0/1 ``weights`` this is the correlation over the entries with weight 1.
    ``eps`` is added to the product of the (unnormalised) norms as in the DIST reference; a
    constant vector therefore has correlation 0, with finite gradients.

    Args:
      x, y: same shape.
      axis: the axis the correlation runs along (it is reduced).
      weights: optional non-negative weights broadcastable to ``x``.
      eps: stabiliser, ``>= 0``.

    Returns:
      float32 array of ``x.shape`` without ``axis``.
    """
    chex.assert_equal_shape([x, y])
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    w = jnp.ones_like(x) if weights is None else jnp.broadcast_to(
        weights.astype(jnp.float32), x.shape)
    total = jnp.sum(w, axis=axis, keepdims=True)
    total = jnp.where(total > 0, total, 1.0)
    xc = x - jnp.sum(w * x, axis=axis, keepdims=True) / total
    yc = y - jnp.sum(w * y, axis=axis, keepdims=True) / total
    cov = jnp.sum(w * xc * yc, axis=axis)
    norm_x = _safe_sqrt(jnp.sum(w * xc * xc, axis=axis))
    norm_y = _safe_sqrt(jnp.sum(w * yc * yc, axis=axis))
    return cov / (norm_x * norm_y + eps)


def dist_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    labels: jax.Array | None = None,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """DIST (Huang et al., NeurIPS 2022): ``T^2 * (beta * inter + gamma * intra)``.

    With ``p = softmax(s/T)``, ``q = softmax(t/T)`` (both ``[B, C]``):

    * inter-class relation ``= 1 - mean_b pearson(p[b, :], q[b, :])`` (correlation across classes,
      one per example, averaged over the examples that count);
    * intra-class relation ``= 1 - mean_c pearson(p[:, c], q[:, c])`` (correlation across the
      batch, one per class, averaged over all ``C`` classes). Masked examples are left out of the
      per-class batch statistics (means and norms), not just the average.

    ``T^2``: the paper's equations carry ``tau^2`` and its later released code and most
    re-implementations (mdistiller-style) multiply both terms by ``T**2``; the first released code
    had no temperature at all. We multiply by ``T^2``; at the default ``T = 1`` all agree.
    Pearson uses ``eps = 1e-8`` added to the product of norms, as in the reference.

    The intra-class term needs a batch: with one counted example every class correlation is 0 and
    the term is the constant ``gamma * T^2``. An all-zero mask gives 0.

    Args:
      student_logits: ``[B, C]``.
      teacher_logits: ``[B, C]``; treated as a constant (``stop_gradient``).
      labels: accepted for a uniform signature and ignored.
      temperature: ``T > 0`` (default 1).
      beta: weight of the inter-class term, ``>= 0`` (default 1).
      gamma: weight of the intra-class term, ``>= 0`` (default 1).
      mask: optional ``[B]`` example weights (1 = counts).

    Returns:
      scalar float32.
    """
    del labels
    _check_positive("temperature", temperature)
    _check_nonnegative("beta", beta)
    _check_nonnegative("gamma", gamma)
    chex.assert_rank(student_logits, 2)
    chex.assert_equal_shape([student_logits, teacher_logits])
    p = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
    weights = _example_weights(mask, p.shape[:1])
    inter = _masked_mean(1.0 - pearson_correlation(p, q, axis=-1), weights)
    intra_per_class = 1.0 - pearson_correlation(p, q, axis=0, weights=weights[:, None])
    intra = jnp.where(jnp.sum(weights) > 0, jnp.mean(intra_per_class), 0.0)
    return (temperature**2) * (beta * inter + gamma * intra)


# ---------------------------------------------------------------------------------------------
# DeiT distillation token (Touvron et al., 2021), with DeiT-LT tail re-weighting.
# ---------------------------------------------------------------------------------------------


def deit_distillation_loss(
    cls_logits: jax.Array,
    dist_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    kind: str = "hard",
    alpha: float = 0.5,
    temperature: float = 1.0,
    class_weights: jax.Array | None = None,
    weight_by: str = "label",
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DeiT objective: ``(1 - alpha) * CE(cls, y) + alpha * distill(dist, teacher)``.

    * ``kind="hard"``: ``distill = CE(dist_logits, argmax(teacher_logits))``.
    * ``kind="soft"``: ``distill = T^2 * KL(softmax(t/T) || softmax(dist/T))`` per example, averaged
      over examples. (DeiT's code divides the summed KL by ``B * C`` -- the legacy PyTorch
      ``kl_div`` mean -- so its soft term is ``1/C`` of ours; we use the per-example mean, like
      every other loss here.)

    DeiT-LT tail re-weighting (``class_weights``, ``[C]``, non-negative): the distillation term
    becomes ``sum_i m_i w_i d_i / sum_i m_i w_i`` with ``w_i = class_weights[k_i]``. With
    ``weight_by="label"`` ``k_i`` is the ground-truth label (for soft labels, ``w_i`` is the
    label-weighted average ``sum_c y_ic class_weights_c``); with ``weight_by="teacher"`` it is the
    teacher's argmax, which is what DeiT-LT's code does (PyTorch ``cross_entropy(weight=...)`` on
    the teacher's hard targets). The CE term is never re-weighted.

    Args:
      cls_logits: ``[..., C]`` class-token logits.
      dist_logits: ``[..., C]`` distillation-token logits.
      teacher_logits: ``[..., C]``; treated as a constant (``stop_gradient``).
      labels: ``[...]`` integer class ids, or ``[..., C]`` soft targets (e.g. from mixup; each row
        sums to 1) for the CE term.
      kind: ``"hard"`` or ``"soft"``.
      alpha: weight of the distillation term, in ``[0, 1]`` (default 0.5).
      temperature: ``T > 0`` for ``kind="soft"`` (default 1; ignored for hard).
      class_weights: optional ``[C]`` per-class weights of the distillation term.
      weight_by: ``"label"`` or ``"teacher"``, which class picks an example's weight.
      mask: optional ``[...]`` example weights (1 = counts).

    Returns:
      ``(loss, {"ce": ..., "distill": ...})``, float32 scalars; ``ce`` and ``distill`` are the
      unweighted terms (before ``1 - alpha`` and ``alpha``).
    """
    if kind not in ("hard", "soft"):
        raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")
    if weight_by not in ("label", "teacher"):
        raise ValueError(f"weight_by must be 'label' or 'teacher', got {weight_by!r}")
    _check_unit_interval("alpha", alpha)
    _check_positive("temperature", temperature)
    chex.assert_equal_shape([cls_logits, dist_logits, teacher_logits])
    soft_labels = labels.ndim == cls_logits.ndim
    if soft_labels:
        chex.assert_equal_shape([cls_logits, labels])
        y = labels.astype(jnp.float32)
        ce_per_example = -jnp.sum(y * jax.nn.log_softmax(cls_logits.astype(jnp.float32)), -1)
        ce = _masked_mean(ce_per_example, mask)
    else:
        ce = softmax_cross_entropy(cls_logits, _check_labels(cls_logits, labels, "deit"),
                                   mask=mask)

    teacher = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    teacher_class = jnp.argmax(teacher, axis=-1)
    if kind == "hard":
        log_q = jax.nn.log_softmax(dist_logits.astype(jnp.float32), axis=-1)
        per_example = -jnp.take_along_axis(log_q, teacher_class[..., None], axis=-1)[..., 0]
    else:
        per_example = (temperature**2) * kl_divergence_with_logits(
            dist_logits, teacher, temperature=temperature)

    weights = _example_weights(mask, per_example.shape)
    if class_weights is not None:
        chex.assert_shape(class_weights, (cls_logits.shape[-1],))
        class_weights = jax.lax.stop_gradient(class_weights).astype(jnp.float32)
        if weight_by == "teacher":
            weights = weights * class_weights[teacher_class]
        elif soft_labels:
            weights = weights * (labels.astype(jnp.float32) @ class_weights)
        else:
            weights = weights * class_weights[labels.astype(jnp.int32)]
    distill = _weighted_mean(per_example, weights)
    loss = (1.0 - alpha) * ce + alpha * distill
    return loss, {"ce": ce, "distill": distill}


# ---------------------------------------------------------------------------------------------
# TinyCLIP affinity mimicking (Wu et al., ICCV 2023).
# ---------------------------------------------------------------------------------------------


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis, float32, finite gradient at 0."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def clip_affinity_mimicking_loss(
    student_img: jax.Array,
    student_txt: jax.Array,
    teacher_img: jax.Array,
    teacher_txt: jax.Array,
    *,
    student_logit_scale: float | jax.Array,
    teacher_logit_scale: float | jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """TinyCLIP affinity mimicking: the student's image-text affinities match the teacher's.

    Embeddings are L2-normalised here. With ``A = scale * img @ txt.T`` (``[B, B]``) for student
    and teacher::

        loss = 0.5 * (mean_i CE(softmax(A_t[i, :]), A_s[i, :])      # image -> text
                    + mean_j CE(softmax(A_t[:, j]), A_s[:, j]))     # text -> image

    where ``CE(p, a) = -sum_k p_k log_softmax(a)_k`` (soft-target cross-entropy, as in TinyCLIP;
    it differs from the KL by the teacher's entropy, a constant).

    The logit scales are the multiplicative temperatures (CLIP's ``exp(logit_scale)``), kept
    separate for student and teacher. ``student_logit_scale`` may be a learnable array (gradients
    flow into it); the teacher's is a constant. A masked pair ``i`` (image ``i`` with text ``i``)
    is removed from every softmax's support and from both means.

    Args:
      student_img, student_txt: ``[B, D]``.
      teacher_img, teacher_txt: ``[B, D']``; treated as constants (``stop_gradient``).
      student_logit_scale, teacher_logit_scale: scalars ``> 0`` (validated when Python numbers).
      mask: optional ``[B]`` pair weights (1 = counts; pairs with weight 0 are excluded).

    Returns:
      scalar float32.
    """
    for name, value in (("student_logit_scale", student_logit_scale),
                        ("teacher_logit_scale", teacher_logit_scale)):
        if isinstance(value, (int, float)):
            _check_positive(name, value)
    chex.assert_rank([student_img, student_txt, teacher_img, teacher_txt], 2)
    chex.assert_equal_shape([student_img, student_txt])
    chex.assert_equal_shape([teacher_img, teacher_txt])
    chex.assert_equal_shape_prefix([student_img, teacher_img], 1)
    hi = jax.lax.Precision.HIGHEST
    s_img, s_txt = _l2_normalize(student_img), _l2_normalize(student_txt)
    t_img = _l2_normalize(jax.lax.stop_gradient(teacher_img))
    t_txt = _l2_normalize(jax.lax.stop_gradient(teacher_txt))
    a_s = jnp.asarray(student_logit_scale, jnp.float32) * jnp.matmul(s_img, s_txt.T, precision=hi)
    a_t = jnp.asarray(jax.lax.stop_gradient(teacher_logit_scale), jnp.float32) * jnp.matmul(
        t_img, t_txt.T, precision=hi)
    weights = _example_weights(mask, a_s.shape[:1])
    support = (weights > 0)[None, :]
    img2txt = _soft_cross_entropy(a_t, a_s, support)
    txt2img = _soft_cross_entropy(a_t.T, a_s.T, support)
    return 0.5 * (_masked_mean(img2txt, weights) + _masked_mean(txt2img, weights))


# ---------------------------------------------------------------------------------------------
# DINO self-distillation (Caron et al., 2021).
# ---------------------------------------------------------------------------------------------


def dino_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    skip_same_view: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    """DINO cross-view loss: ``CE(softmax((t - c) / tau_t), log_softmax(s / tau_s))``.

    Averaged over the (teacher view ``i``, student view ``j``) pairs; with ``skip_same_view`` the
    pairs ``i == j`` are left out, the first ``V_t`` student views being the teacher's views (DINO's
    global crops come first). Each pair contributes the masked mean over the batch of
    ``-sum_k q_ik log p_jk``; pairs are weighted equally, as in the reference. The teacher
    temperature warm-up (0.04 -> 0.07 in DINO) is a schedule left to the caller.

    Args:
      student_logits: ``[V_s, B, K]``.
      teacher_logits: ``[V_t, B, K]``; treated as a constant (``stop_gradient``).
      center: ``[K]``, the running centre (constant; see ``dino_center_update``).
      student_temp: ``tau_s > 0`` (default 0.1).
      teacher_temp: ``tau_t > 0`` (default 0.04).
      skip_same_view: leave out pairs of the same view (needs ``V_s >= V_t``).
      mask: optional ``[B]`` example weights (1 = counts).

    Returns:
      scalar float32.
    """
    _check_positive("student_temp", student_temp)
    _check_positive("teacher_temp", teacher_temp)
    chex.assert_rank([student_logits, teacher_logits, center], [3, 3, 1])
    chex.assert_equal_shape([student_logits[0], teacher_logits[0]])
    chex.assert_shape(center, (student_logits.shape[-1],))
    num_student, num_teacher = student_logits.shape[0], teacher_logits.shape[0]
    pairs = jnp.ones((num_teacher, num_student), jnp.float32)
    if skip_same_view:
        if num_student < num_teacher:
            raise ValueError(
                f"skip_same_view needs at least as many student views as teacher views, got "
                f"{num_student} student and {num_teacher} teacher views")
        pairs = pairs - jnp.eye(num_teacher, num_student)
        if num_student == num_teacher == 1:
            raise ValueError("skip_same_view with one student and one teacher view leaves no pairs")

    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    c = jax.lax.stop_gradient(center).astype(jnp.float32)
    q = jax.nn.softmax((t - c) / teacher_temp, axis=-1)
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    ce = -jnp.einsum("ibk,jbk->ijb", q, log_p, precision=jax.lax.Precision.HIGHEST)
    weights = _example_weights(mask, ce.shape[-1:])
    per_pair = jnp.sum(ce * weights, axis=-1) / jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(per_pair * pairs) / jnp.sum(pairs)


def dino_center_update(
    center: jax.Array,
    teacher_logits: jax.Array,
    *,
    momentum: float = 0.9,
    mask: jax.Array | None = None,
) -> jax.Array:
    """EMA of the teacher's mean output: ``momentum * center + (1 - momentum) * mean(t)``.

    The mean runs over every view and every counted example (DINO concatenates the teacher's
    views and all-reduces across devices; under ``jit`` with a sharded batch the mean here is
    already global). With an all-zero mask the centre is returned unchanged.

    Args:
      center: ``[K]``.
      teacher_logits: ``[..., K]`` (``[V_t, B, K]`` as in ``dino_loss``).
      momentum: in ``[0, 1]`` (default 0.9).
      mask: optional weights broadcastable to ``teacher_logits.shape[:-1]`` (a ``[B]`` mask
        broadcasts over ``[V_t, B]``).

    Returns:
      ``[K]`` float32, the new centre (no gradient flows through it).
    """
    _check_unit_interval("momentum", momentum)
    chex.assert_rank(center, 1)
    chex.assert_shape(center, (teacher_logits.shape[-1],))
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    center = jax.lax.stop_gradient(center).astype(jnp.float32)
    weights = _example_weights(mask, t.shape[:-1])
    batch_axes = tuple(range(t.ndim - 1))
    total = jnp.sum(weights)
    batch_center = jnp.sum(t * weights[..., None], axis=batch_axes) / jnp.where(
        total > 0, total, 1.0)
    updated = momentum * center + (1.0 - momentum) * batch_center
    return jnp.where(total > 0, updated, center)


# ---------------------------------------------------------------------------------------------
# Per-example weighted KD and influence-based weights (KD-AIF building blocks).
# ---------------------------------------------------------------------------------------------


def weighted_kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    weights: jax.Array,
    labels: jax.Array | None = None,
    temperature: float = 4.0,
    normalize: str = "weights",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Per-example weighted Hinton term: ``T^2 * sum_i m_i w_i KL_i / N``.

    ``KL_i = KL(softmax(t_i/T) || softmax(s_i/T))``. The normaliser ``N`` is ``sum_i m_i w_i``
    with ``normalize="weights"`` (default: only the relative weights matter, and uniform weights
    give exactly ``hinton_kd_loss``), or ``sum_i m_i`` with ``normalize="count"`` (the weights'
    absolute size scales the loss). The result is 0 when ``N`` is 0.

    The weights are constants (``stop_gradient``) and must be non-negative, e.g. from
    ``influence_weights``.

    Args:
      student_logits: ``[..., C]``.
      teacher_logits: ``[..., C]``; treated as a constant (``stop_gradient``).
      weights: ``[...]`` non-negative per-example weights (broadcastable).
      labels: accepted for a uniform signature and ignored.
      temperature: ``T > 0`` (default 4).
      normalize: ``"weights"`` or ``"count"``.
      mask: optional ``[...]`` example weights (1 = counts).

    Returns:
      scalar float32.
    """
    del labels
    _check_positive("temperature", temperature)
    if normalize not in ("weights", "count"):
        raise ValueError(f"normalize must be 'weights' or 'count', got {normalize!r}")
    chex.assert_equal_shape([student_logits, teacher_logits])
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    kl = kl_divergence_with_logits(student_logits, teacher_logits, temperature=temperature)
    mask_weights = _example_weights(mask, kl.shape)
    w = jnp.broadcast_to(jax.lax.stop_gradient(weights).astype(jnp.float32), kl.shape)
    total = jnp.sum(mask_weights * w) if normalize == "weights" else jnp.sum(mask_weights)
    weighted_sum = jnp.sum(kl * mask_weights * w)
    return (temperature**2) * weighted_sum / jnp.where(total > 0, total, 1.0)


# Relative spread of influence scores below which they count as equal (8 float32 ulps).
_SCORE_RESOLUTION = 8 * float(jnp.finfo(jnp.float32).eps)


def influence_weights(
    per_example_grads: jax.Array,
    reference_grad: jax.Array,
    *,
    scale: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """KD-AIF-style sample weights from a first-order influence approximation.

    ``score_i = <g_i, g_ref>`` where ``g_i`` is the gradient of example ``i``'s training loss and
    ``g_ref`` the gradient of a reference (validation) loss, both w.r.t. the same ``P`` parameters
    (for example the last layer, or the logits pushed through a fixed projection). A gradient step
    on example ``i`` with learning rate ``lr`` changes the reference loss by ``-lr * score_i`` to
    first order, so ``score_i > 0`` marks a helpful example. This is the TracIn / gradient-alignment
    approximation of the influence function, ``-g_ref^T H^{-1} g_i`` with the Hessian replaced by
    the identity: an approximation, not the exact influence.

    The scores are standardised over the counted examples, ``z_i = (score_i - mean) / std`` (a
    batch of equal scores, or of scores whose spread is below 8 float32 ulps of their largest
    magnitude, gives ``z = 0``), and the weights are ``sigmoid(scale * z_i)`` in
    ``(0, 1)``; masked examples get weight 0.

    Args:
      per_example_grads: ``[B, P]``.
      reference_grad: ``[P]``.
      scale: sharpness of the sigmoid, ``>= 0`` (0 gives uniform weights 0.5).
      mask: optional ``[B]`` (1 = counts).

    Returns:
      ``[B]`` float32 weights.
    """
    _check_nonnegative("scale", scale)
    chex.assert_rank([per_example_grads, reference_grad], [2, 1])
    chex.assert_equal_shape_suffix([per_example_grads, reference_grad], 1)
    scores = jnp.matmul(per_example_grads.astype(jnp.float32),
                        reference_grad.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    weights = _example_weights(mask, scores.shape)
    # Standardise the scores shifted by one counted score: equal scores then give exactly 0
    # (a mean of equal float32 values can miss them by an ulp, which z would blow up to +-1, as
    # it did on a GPU). A spread below float32's resolution of the scores' magnitude is rounding,
    # not signal: such scores count as equal.
    counted = weights > 0
    shifted = scores - scores[jnp.argmax(counted)]
    mean = _weighted_mean(shifted, weights)
    std = jnp.sqrt(_weighted_mean(jnp.square(shifted - mean), weights))
    resolution = _SCORE_RESOLUTION * jnp.max(jnp.where(counted, jnp.abs(scores), 0.0))
    z = jnp.where(std > resolution, (shifted - mean) / jnp.maximum(std, 1e-30), 0.0)
    return jnp.where(counted, jax.nn.sigmoid(scale * z), 0.0)
