"""Feature-level and relational knowledge distillation losses (pure functions).

Each loss follows the formulation of the RepDistiller / CRD benchmark code (Tian et al., 2020),
whose numbers the method cards in ``METHODS.md`` quote, unless its docstring says otherwise.
The benchmark loss weights (``-b`` in RepDistiller's ``run_cifar_distill.sh``) are NOT applied
here; the caller multiplies: FitNets 100, AT 1000, SP 3000, PKT 30000, RKD 1 (its 25/50 weights
are inside), VID 1, FT 200, CRD 0.8.

Conventions shared by every function in this module:

* Features are NHWC ``[B, H, W, C]`` conv maps or ``[B, D]`` embeddings; the leading axis is
  the batch. Inputs may be any float dtype; all arithmetic is float32 and the result is a float32
  scalar.
* ``mask`` is an optional ``[B]`` array, 1 = the example counts, 0 = it does not (e.g. padding).
  Per-example losses (FitNets, AT, VID, FT, ICKD, CRD) use it as weights in a weighted mean over
  examples. Relational losses (RKD, PKT, SP, CC) use ``mask != 0`` to select the examples that
  form pairs and triplets: their value with a mask equals the unmasked value on the sub-batch of
  selected examples. Masked rows are replaced by zeros before anything is computed, so padding
  that holds garbage (even NaN) cannot leak into the value or the gradient. An all-zero mask
  gives exactly 0 with finite (zero) gradients.
* Teacher features go through ``jax.lax.stop_gradient``: no gradient reaches a teacher through
  these losses. The one deliberate exception is CRD's ``teacher_emb``, the output of a
  *trainable* projection head (see :func:`crd_loss`).
* Hyperparameters are keyword-only and validated (``ValueError`` naming the parameter) when they
  are concrete Python numbers; incompatible shapes raise ``ValueError`` naming both shapes and
  the adapter from ``jaxkd.kd.adapters`` that fixes them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

# Gram and similarity matrices are small (B x B or C x C); compute them at full float32 precision
# on every backend (TPU/GPU default matmul precision would round the operands to bf16/tf32).
_HIGHEST = jax.lax.Precision.HIGHEST
# `F.normalize` and RKD's `pdist` clamp in the reference code.
_NORMALIZE_EPS = 1e-12
_PDIST_EPS = 1e-12
# The constant added inside CRD's NCE logs (`eps` in RepDistiller's `crd/criterion.py`).
_CRD_EPS = 1e-7


# --------------------------------------------------------------------------------------------
# Validation helpers.
# --------------------------------------------------------------------------------------------


def _is_concrete_number(value) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive(fn: str, name: str, value) -> None:
    if _is_concrete_number(value) and not value > 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")


def _check_non_negative(fn: str, name: str, value) -> None:
    if _is_concrete_number(value) and not value >= 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {value}")


def _check_float_array(fn: str, name: str, x, ranks: Sequence[int] | None = None) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{fn}: {name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a float array, got dtype {x.dtype}")
    if ranks is not None and x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{fn}: {name} must have rank {want}, got shape {tuple(x.shape)}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{fn}: {name} needs a non-empty leading batch axis, got {tuple(x.shape)}")


def _check_same_batch(fn: str, s_name: str, s, t_name: str, t) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{fn}: {s_name} {tuple(s.shape)} and {t_name} {tuple(t.shape)} have different batch "
            "sizes; pass the student and teacher features of the same examples"
        )


def _shape_error(fn: str, s_name: str, s_shape, t_name: str, t_shape, fix: str) -> ValueError:
    return ValueError(
        f"{fn}: {s_name} shape {tuple(s_shape)} is incompatible with {t_name} shape "
        f"{tuple(t_shape)}; {fix}"
    )


def _regressor_hint(t_shape) -> str:
    if len(t_shape) == 4:
        return (
            "map the student feature with jaxkd.kd.adapters.ConvRegressor("
            f"out_channels={t_shape[-1]}, out_hw={tuple(t_shape[1:3])}) first"
        )
    return (
        "map the student feature with a trainable regressor (e.g. flax.linen.Dense("
        f"{int(math.prod(t_shape[1:]))}) reshaped to {tuple(t_shape[1:])}) first"
    )


def _example_weights(fn: str, mask, batch: int) -> jax.Array:
    """``[B]`` float32 example weights (all ones without a mask)."""
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    if not hasattr(mask, "shape"):
        mask = jnp.asarray(mask)
    if tuple(mask.shape) != (batch,):
        raise ValueError(
            f"{fn}: mask must have shape ({batch},) (one weight per example), got "
            f"{tuple(mask.shape)}"
        )
    return jnp.asarray(mask).astype(jnp.float32)


def _zero_masked(x: jax.Array, valid: jax.Array) -> jax.Array:
    """``x`` as float32 with the rows of excluded examples replaced by zeros."""
    x = x.astype(jnp.float32)
    return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)


def _weighted_mean(per_example: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_i w_i v_i / sum_i w_i``; exactly 0 when all weights are 0."""
    total = jnp.sum(jnp.where(weights != 0, per_example * weights, 0.0))
    denom = jnp.sum(weights)
    return total / jnp.where(denom != 0, denom, 1.0)


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """L2 norm over ``axis`` (kept) whose gradient is 0, not NaN, at ``x = 0``."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """PyTorch's ``F.normalize``: ``x / max(||x||_2, 1e-12)``."""
    return x / jnp.maximum(_safe_norm(x, axis), _NORMALIZE_EPS)


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _smooth_l1(x: jax.Array) -> jax.Array:
    """PyTorch's ``smooth_l1_loss`` elementwise with ``beta = 1`` (Huber with delta 1)."""
    ax = jnp.abs(x)
    return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


# --------------------------------------------------------------------------------------------
# FitNets.
# --------------------------------------------------------------------------------------------


def fitnet_loss(
    student_feat_projected: jax.Array,
    teacher_feat: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """FitNets hint loss (Romero et al., 2015): mean squared error to the teacher's hint.

    The student's guided layer must already be mapped to the teacher's shape by a regressor
    (``jaxkd.kd.adapters.ConvRegressor`` for conv maps), applied by the caller so that its
    parameters train with the student.

    Normalisation: mean over all non-batch elements of ``(s - t)^2`` per example, then the
    (masked) mean over examples, i.e. PyTorch's ``nn.MSELoss()`` (RepDistiller's ``HintLoss``)
    when unmasked. Benchmark weight 100.

    Args:
      student_feat_projected: ``[B, ...]`` regressed student feature (``[B, H, W, C]`` or
        ``[B, D]``).
      teacher_feat: ``[B, ...]`` teacher hint, same shape.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "fitnet_loss"
    _check_float_array(fn, "student_feat_projected", student_feat_projected)
    _check_float_array(fn, "teacher_feat", teacher_feat)
    if student_feat_projected.shape != teacher_feat.shape:
        raise _shape_error(fn, "student_feat_projected", student_feat_projected.shape,
                           "teacher_feat", teacher_feat.shape, _regressor_hint(teacher_feat.shape))
    w = _example_weights(fn, mask, teacher_feat.shape[0])
    s = _zero_masked(student_feat_projected, w != 0)
    t = _zero_masked(jax.lax.stop_gradient(teacher_feat), w != 0)
    per_example = jnp.mean(_flatten((s - t) ** 2), axis=1)
    loss = _weighted_mean(per_example, w)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Attention transfer.
# --------------------------------------------------------------------------------------------


def attention_map(feat: jax.Array, *, p: float = 2.0) -> jax.Array:
    """AT spatial attention map: ``normalize_L2(mean_c |f|^p)`` flattened, ``[B, H*W]`` float32.

    ``feat`` is ``[B, H, W, C]``. The L2 normalisation is PyTorch's ``F.normalize`` (divides by
    ``max(||a||, 1e-12)``). RepDistiller's ``at`` uses ``f.pow(p)`` (no absolute value); the two
    agree for even ``p`` and the default ``p = 2``; this follows the paper's ``|f|^p``.
    """
    f = feat.astype(jnp.float32)
    a = jnp.mean(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1)
    return _l2_normalize(a, axis=-1)


def attention_transfer_loss(
    student_feats: Sequence[jax.Array] | jax.Array,
    teacher_feats: Sequence[jax.Array] | jax.Array,
    *,
    p: float = 2.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Activation-based attention transfer (Zagoruyko & Komodakis, 2017).

    For each (student, teacher) pair of conv maps, ``a = attention_map(f, p=p)``
    (``normalize_L2(mean_c |f|^p)`` over the ``H*W`` positions) and the pair's loss is
    ``mean((a_s - a_t)^2)``, exactly RepDistiller's ``at_loss`` — note: the mean of the squared
    difference over positions, not the paper's ``||a_s - a_t||_2``.

    Normalisation: per example the mean over ``H*W`` of the squared difference; the (masked)
    mean over examples; summed over the pairs (RepDistiller sums the per-pair losses of its
    ``Attention`` module). Benchmark weight 1000.

    Channel counts may differ within a pair (the map averages over channels); spatial sizes may
    not: RepDistiller pools the larger map silently, here it is an error (pool or resize the
    student map, e.g. with ``jaxkd.kd.adapters.resize_spatial``).

    Args:
      student_feats: a sequence of ``[B, H_i, W_i, C_i]`` maps (or a single map).
      teacher_feats: a sequence of ``[B, H_i, W_i, C'_i]`` maps of the same length.
      p: the exponent in ``|f|^p``, ``>= 1`` (the gradient at 0 is unbounded for ``p < 1``).
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "attention_transfer_loss"
    if _is_concrete_number(p) and not p >= 1:
        raise ValueError(f"{fn}: p must be >= 1, got {p}")
    if hasattr(student_feats, "shape"):
        student_feats = [student_feats]
    if hasattr(teacher_feats, "shape"):
        teacher_feats = [teacher_feats]
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if not student_feats or len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"{fn}: need the same non-zero number of student and teacher maps, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    w = None
    total = jnp.zeros((), jnp.float32)
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        _check_float_array(fn, f"student_feats[{i}]", fs, ranks=(4,))
        _check_float_array(fn, f"teacher_feats[{i}]", ft, ranks=(4,))
        _check_same_batch(fn, f"student_feats[{i}]", fs, f"teacher_feats[{i}]", ft)
        if fs.shape[1:3] != ft.shape[1:3]:
            raise _shape_error(
                fn, f"student_feats[{i}]", fs.shape, f"teacher_feats[{i}]", ft.shape,
                "attention maps need equal spatial sizes; resize the student map with "
                f"jaxkd.kd.adapters.resize_spatial(x, {tuple(ft.shape[1:3])}) or pick layers "
                "of matching resolution",
            )
        if w is None:
            w = _example_weights(fn, mask, fs.shape[0])
        elif fs.shape[0] != w.shape[0]:
            raise ValueError(f"{fn}: pair {i} has batch {fs.shape[0]}, pair 0 has {w.shape[0]}")
        valid = w != 0
        a_s = attention_map(_zero_masked(fs, valid), p=p)
        a_t = attention_map(_zero_masked(jax.lax.stop_gradient(ft), valid), p=p)
        total = total + _weighted_mean(jnp.mean((a_s - a_t) ** 2, axis=1), w)
    chex.assert_shape(total, ())
    return total


# --------------------------------------------------------------------------------------------
# Relational KD.
# --------------------------------------------------------------------------------------------


def _rkd_relations(x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised pairwise distances ``[B, B]`` and triplet angle cosines ``[B, B, B]``.

    ``x`` is ``[B, D]`` float32 with excluded rows zeroed. Entries that involve an excluded
    example, and the degenerate ones (``i == j`` for distances; ``j == i`` or ``k == i`` for
    angles), are exactly 0.
    """
    b = x.shape[0]
    # Everything from the Gram matrix of the centred rows (distances are translation
    # invariant; centring keeps |x|^2 close to the distances' scale, so the Gram differences
    # lose no precision): O(B^2 D + B^3) work instead of the O(B^3 D) of an explicit
    # [B, B, D] difference tensor, which made the angle term 100x a CE step at D = 256.
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    x = jnp.where(valid[:, None], x - jnp.sum(x, axis=0) / n_valid, 0.0)
    gram = jnp.matmul(x, x.T, precision=_HIGHEST)
    g_ii = jnp.diagonal(gram)
    # sq[i, j] = |x_j - x_i|^2; inner[i, j, k] = <x_j - x_i, x_k - x_i>.
    sq = jnp.maximum(g_ii[:, None] + g_ii[None, :] - 2.0 * gram, 0.0)
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(b, dtype=bool)
    # RepDistiller's pdist: sqrt(clamp(|x_i - x_j|^2, 1e-12)), diagonal zeroed; then divided by
    # the mean over the positive (off-diagonal) entries.
    dist = jnp.where(pair, jnp.sqrt(jnp.maximum(sq, _PDIST_EPS)), 0.0)
    mean = jnp.sum(dist) / jnp.maximum(jnp.sum(pair), 1)
    dist = dist / jnp.where(mean > 0, mean, 1.0)
    # angle[i, j, k] = <normalize(x_j - x_i), normalize(x_k - x_i)>.
    # Two identical embeddings (e.g. dead ReLU features) give sq == 0 on a valid pair: keep the
    # sqrt away from 0 there, or its derivative makes the whole gradient NaN.
    norm = jnp.maximum(jnp.sqrt(jnp.where(pair & (sq > 0), sq, 1.0)), _NORMALIZE_EPS)
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + g_ii[:, None, None]
    angle = inner / (norm[:, :, None] * norm[:, None, :])
    angle = jnp.where(pair[:, :, None] & pair[:, None, :], angle, 0.0)
    return dist, angle


def rkd_loss(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Relational knowledge distillation (Park et al., 2019), distance + angle terms.

    ``distance_weight * L_d + angle_weight * L_a`` with, over the ``n`` selected examples,

    * ``L_d``: pairwise Euclidean distances, each divided by the mean distance over the
      off-diagonal pairs (separately for student and teacher), compared with smooth-L1 (Huber,
      delta 1) and summed over all ``n x n`` pairs, then divided by ``n^2``;
    * ``L_a``: cosines of the angles ``<normalize(e_j - e_i), normalize(e_k - e_i)>`` for all
      ``n^3`` triplets, smooth-L1, summed and divided by ``n^3``.

    Normalisation: identical to RepDistiller's ``RKDLoss`` (``F.smooth_l1_loss`` with mean
    reduction over the ``B x B`` and ``B x B x B`` tensors), so the degenerate entries (diagonal
    pairs, triplets with ``j == i`` or ``k == i``), which are 0 for both networks, count in the
    denominators. Excluded examples take part in no pair or triplet and ``n`` counts only the
    selected ones. The mean student distance is differentiated through, as in the reference.
    Benchmark weights: distance 25, angle 50, overall 1.

    Features of rank > 2 are flattened to ``[B, -1]`` (as the reference does); the student and
    teacher widths may differ. Memory is ``O(B^2 D + B^3)`` (pairwise differences and the
    triplet tensor), as in the reference: apply it to pooled embeddings, not to large maps.

    Args:
      student_emb: ``[B, D]`` (or ``[B, ...]``).
      teacher_emb: ``[B, D']`` (or ``[B, ...]``).
      distance_weight: weight of ``L_d``, ``>= 0``.
      angle_weight: weight of ``L_a``, ``>= 0``.
      mask: optional ``[B]``; examples with ``mask == 0`` are excluded.

    Returns:
      scalar float32.
    """
    fn = "rkd_loss"
    _check_non_negative(fn, "distance_weight", distance_weight)
    _check_non_negative(fn, "angle_weight", angle_weight)
    _check_float_array(fn, "student_emb", student_emb)
    _check_float_array(fn, "teacher_emb", teacher_emb)
    _check_same_batch(fn, "student_emb", student_emb, "teacher_emb", teacher_emb)
    valid = _example_weights(fn, mask, student_emb.shape[0]) != 0
    s = _zero_masked(_flatten(student_emb), valid)
    t = _zero_masked(_flatten(jax.lax.stop_gradient(teacher_emb)), valid)
    d_s, a_s = _rkd_relations(s, valid)
    d_t, a_t = _rkd_relations(t, valid)
    n = jnp.sum(valid.astype(jnp.float32))
    loss_d = jnp.sum(_smooth_l1(d_s - d_t)) / jnp.maximum(n * n, 1.0)
    loss_a = jnp.sum(_smooth_l1(a_s - a_t)) / jnp.maximum(n * n * n, 1.0)
    loss = distance_weight * loss_d + angle_weight * loss_a
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Probabilistic knowledge transfer.
# --------------------------------------------------------------------------------------------


def _pkt_conditionals(x: jax.Array, valid: jax.Array, eps: float) -> jax.Array:
    """Row-normalised ``(cos + 1) / 2`` similarities over the selected columns, ``[B, B]``."""
    x = x / (_safe_norm(x) + eps)
    sim = (jnp.matmul(x, x.T, precision=_HIGHEST) + 1.0) / 2.0
    sim = jnp.where(valid[None, :], sim, 0.0)
    rows = jnp.sum(sim, axis=1, keepdims=True)
    return sim / jnp.where(rows > 0, rows, 1.0)


def pkt_loss(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    eps: float = 1e-7,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018), cosine-kernel version.

    Each row is divided by ``||x|| + eps``; the cosine similarity matrix is mapped to ``[0, 1]``
    by ``(cos + 1) / 2`` and its rows are normalised into conditional distributions ``P`` (the
    teacher's) and ``Q`` (the student's). Per row ``i``:
    ``KL_i = sum_j P_ij log((P_ij + eps) / (Q_ij + eps))``.

    Normalisation: ``sum_i KL_i / n^2`` over the ``n`` selected examples, i.e. the mean over the
    ``n x n`` matrix as in RepDistiller's ``PKT.cosine_similarity_loss`` (``torch.mean``), which
    is the mean over rows of ``KL_i`` divided once more by ``n``. The self-similarity
    ``j == i`` is kept, as in the reference. Benchmark weight 30000.

    Args:
      student_emb: ``[B, D]`` (rank > 2 is flattened).
      teacher_emb: ``[B, D']`` (rank > 2 is flattened); the widths may differ.
      eps: stabiliser in the row normalisation and inside the log, ``> 0``.
      mask: optional ``[B]``; examples with ``mask == 0`` are excluded from rows and columns.

    Returns:
      scalar float32.
    """
    fn = "pkt_loss"
    _check_positive(fn, "eps", eps)
    _check_float_array(fn, "student_emb", student_emb)
    _check_float_array(fn, "teacher_emb", teacher_emb)
    _check_same_batch(fn, "student_emb", student_emb, "teacher_emb", teacher_emb)
    valid = _example_weights(fn, mask, student_emb.shape[0]) != 0
    s = _zero_masked(_flatten(student_emb), valid)
    t = _zero_masked(_flatten(jax.lax.stop_gradient(teacher_emb)), valid)
    q = _pkt_conditionals(s, valid, eps)
    p = _pkt_conditionals(t, valid, eps)
    pair = valid[:, None] & valid[None, :]
    kl = jnp.where(pair, p * jnp.log((p + eps) / (q + eps)), 0.0)
    n = jnp.sum(valid.astype(jnp.float32))
    loss = jnp.sum(kl) / jnp.maximum(n * n, 1.0)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Similarity-preserving KD.
# --------------------------------------------------------------------------------------------


def _sp_gram(x: jax.Array) -> jax.Array:
    g = jnp.matmul(x, x.T, precision=_HIGHEST)
    return _l2_normalize(g, axis=1)


def similarity_preserving_loss(
    student_feat: jax.Array,
    teacher_feat: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Similarity-preserving KD (Tung & Mori, 2019).

    With ``f`` flattened to ``[B, -1]``: ``G = f f^T`` (``B x B``), each row L2-normalised
    (``F.normalize``), and the loss ``||G_s - G_t||_F^2 / n^2`` over the ``n`` selected examples
    (RepDistiller's ``Similarity.similarity_loss``). Benchmark weight 3000.

    Any shapes with the same batch size work (the Gram matrices are ``B x B``); conv maps of
    different widths or resolutions need no adapter.

    Args:
      student_feat: ``[B, ...]``.
      teacher_feat: ``[B, ...]``.
      mask: optional ``[B]``; examples with ``mask == 0`` are excluded from rows and columns.

    Returns:
      scalar float32.
    """
    fn = "similarity_preserving_loss"
    _check_float_array(fn, "student_feat", student_feat)
    _check_float_array(fn, "teacher_feat", teacher_feat)
    _check_same_batch(fn, "student_feat", student_feat, "teacher_feat", teacher_feat)
    valid = _example_weights(fn, mask, student_feat.shape[0]) != 0
    # Zeroed rows give zero rows and columns in G, so excluded columns drop out of the row norms.
    g_s = _sp_gram(_zero_masked(_flatten(student_feat), valid))
    g_t = _sp_gram(_zero_masked(_flatten(jax.lax.stop_gradient(teacher_feat)), valid))
    pair = valid[:, None] & valid[None, :]
    diff = jnp.where(pair, g_s - g_t, 0.0)
    n = jnp.sum(valid.astype(jnp.float32))
    loss = jnp.sum(diff * diff) / jnp.maximum(n * n, 1.0)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Contrastive representation distillation.
# --------------------------------------------------------------------------------------------


def crd_init_memory(
    key: jax.Array, num_data: int, dim: int, *, normalize: bool = True
) -> tuple[jax.Array, jax.Array]:
    """The two CRD memory banks ``(memory_student, memory_teacher)``, each ``[num_data, dim]``.

    Entries are drawn independently from ``U(-stdv, stdv)`` with ``stdv = 1 / sqrt(dim / 3)`` as
    in RepDistiller's ``ContrastMemory`` (each row then has expected squared norm 1). With
    ``normalize=True`` (default) every row is additionally scaled to unit L2 norm, so that all
    rows live on the sphere from the start like the rows written by :func:`crd_update_memory`;
    ``normalize=False`` keeps the reference's raw init.
    """
    fn = "crd_init_memory"
    if not _is_int(num_data) or num_data < 2:
        raise ValueError(f"{fn}: num_data must be an int >= 2, got {num_data!r}")
    if not _is_int(dim) or dim < 1:
        raise ValueError(f"{fn}: dim must be an int >= 1, got {dim!r}")
    stdv = 1.0 / math.sqrt(dim / 3.0)
    k_s, k_t = jax.random.split(key)
    banks = []
    for k in (k_s, k_t):
        m = jax.random.uniform(k, (num_data, dim), jnp.float32, -stdv, stdv)
        banks.append(_l2_normalize(m) if normalize else m)
    return banks[0], banks[1]


def crd_update_memory(
    memory: jax.Array,
    indices: jax.Array,
    emb: jax.Array,
    *,
    momentum: float = 0.5,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Momentum update of the memory rows of this batch's examples, returning the new bank.

    For each example ``b``: ``row = momentum * memory[indices[b]] + (1 - momentum) * e_b``, then
    ``row / ||row||``, written back at ``indices[b]`` (RepDistiller's ``ContrastMemory``). ``e_b``
    is ``emb[b]`` L2-normalised (a no-op for the output of ``LinearEmbed``, which is already unit
    norm; matching :func:`crd_loss`, which normalises too). The student bank is updated with
    the student embeddings and the teacher bank with the teacher embeddings, after the loss is
    computed. No gradient flows through the update. Rows of examples with ``mask == 0`` are left
    untouched. If an index repeats within the batch, which of its updates is kept is unspecified
    (as with the reference's ``index_copy_``).

    Args:
      memory: ``[N, D]`` bank.
      indices: ``[B]`` integer dataset indices of the batch's examples.
      emb: ``[B, D]`` embeddings of those examples.
      momentum: weight of the old row, in ``[0, 1)``; 0.5 in the reference.
      mask: optional ``[B]``; rows of examples with ``mask == 0`` are not written.

    Returns:
      ``[N, D]`` float32, the updated bank.
    """
    fn = "crd_update_memory"
    if _is_concrete_number(momentum) and not 0.0 <= momentum < 1.0:
        raise ValueError(f"{fn}: momentum must be in [0, 1), got {momentum}")
    _check_float_array(fn, "memory", memory, ranks=(2,))
    _check_float_array(fn, "emb", emb, ranks=(2,))
    if emb.shape[1] != memory.shape[1]:
        raise _shape_error(fn, "emb", emb.shape, "memory", memory.shape,
                           "the embedding width must equal the bank's width")
    if tuple(indices.shape) != (emb.shape[0],) or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(
            f"{fn}: indices must be integer with shape ({emb.shape[0]},), got "
            f"{indices.dtype} {tuple(indices.shape)}"
        )
    valid = _example_weights(fn, mask, emb.shape[0]) != 0
    memory = jax.lax.stop_gradient(jnp.asarray(memory, jnp.float32))
    e = _l2_normalize(_zero_masked(jax.lax.stop_gradient(jnp.asarray(emb)), valid))
    rows = momentum * memory[indices] + (1.0 - momentum) * e
    rows = _l2_normalize(rows)
    # Excluded examples scatter to an out-of-range row, which mode="drop" discards.
    target = jnp.where(valid, indices, memory.shape[0])
    return memory.at[target].set(rows, mode="drop")


def crd_sample_negatives(
    key: jax.Array, indices: jax.Array, num_data: int, num_negatives: int
) -> jax.Array:
    """``[B, K]`` int32 negative indices, uniform over the ``num_data - 1`` other examples.

    Drawn with replacement; entry ``[b, k]`` is never ``indices[b]``. RepDistiller's CIFAR-100
    pipeline (``mode='exact'``) instead draws negatives from examples of *other classes*; any
    such index array can be passed to :func:`crd_loss` in place of this one.
    """
    fn = "crd_sample_negatives"
    if not _is_int(num_data) or num_data < 2:
        raise ValueError(f"{fn}: num_data must be an int >= 2, got {num_data!r}")
    if not _is_int(num_negatives) or num_negatives < 1:
        raise ValueError(f"{fn}: num_negatives must be an int >= 1, got {num_negatives!r}")
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(
            f"{fn}: indices must be a 1-D integer array, got {indices.dtype} {indices.shape}"
        )
    r = jax.random.randint(key, (indices.shape[0], num_negatives), 0, num_data - 1, jnp.int32)
    # Skip over the positive: values >= the positive index shift up by one.
    return r + (r >= indices[:, None].astype(jnp.int32)).astype(jnp.int32)


def _crd_check(fn, student_emb, teacher_emb, memory_student, memory_teacher, indices,
               contrast_idx, num_data):
    for name, x in (("student_emb", student_emb), ("teacher_emb", teacher_emb)):
        _check_float_array(fn, name, x, ranks=(2,))
    for name, x in (("memory_student", memory_student), ("memory_teacher", memory_teacher)):
        _check_float_array(fn, name, x, ranks=(2,))
    if not _is_int(num_data) or num_data < 2:
        raise ValueError(f"{fn}: num_data must be an int >= 2, got {num_data!r}")
    _check_same_batch(fn, "student_emb", student_emb, "teacher_emb", teacher_emb)
    b, d = student_emb.shape
    if teacher_emb.shape[1] != d:
        raise _shape_error(fn, "student_emb", student_emb.shape, "teacher_emb", teacher_emb.shape,
                           "project both with jaxkd.kd.adapters.LinearEmbed(dim) heads of the "
                           "same dim (128 in the reference)")
    for name, m in (("memory_student", memory_student), ("memory_teacher", memory_teacher)):
        if m.shape != (num_data, d):
            raise ValueError(
                f"{fn}: {name} must have shape (num_data, dim) = ({num_data}, {d}), got "
                f"{tuple(m.shape)}; create the banks with crd_init_memory(key, num_data, dim)"
            )
    if tuple(indices.shape) != (b,) or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(
            f"{fn}: indices must be integer with shape ({b},), got {indices.dtype} "
            f"{tuple(indices.shape)}"
        )
    if (contrast_idx.ndim != 2 or contrast_idx.shape[0] != b or contrast_idx.shape[1] < 1
            or not jnp.issubdtype(contrast_idx.dtype, jnp.integer)):
        raise ValueError(
            f"{fn}: contrast_idx must be integer with shape ({b}, K), K >= 1, got "
            f"{contrast_idx.dtype} {tuple(contrast_idx.shape)}"
        )


# Banks with at most this many rows per drawn index (K + 1) are scored with one [B, N] matmul.
_CRD_MATMUL_ROWS_PER_INDEX = 32


def _crd_logits(student_emb, teacher_emb, memory_student, memory_teacher, indices,
                contrast_idx, valid):
    """``(l_s, l_t)``, each ``[B, K + 1]``: column 0 the positive, then the K negatives.

    ``l_s[b, k] = <memory_teacher[idx[b, k]], s_b>`` (student anchor, teacher bank) and
    ``l_t[b, k] = <memory_student[idx[b, k]], t_b>`` (teacher anchor, student bank).
    """
    s = _l2_normalize(_zero_masked(student_emb, valid))
    t = _l2_normalize(_zero_masked(teacher_emb, valid))
    idx = jnp.concatenate([indices[:, None], contrast_idx], axis=1).astype(jnp.int32)
    mem_t = jax.lax.stop_gradient(memory_teacher).astype(jnp.float32)
    mem_s = jax.lax.stop_gradient(memory_student).astype(jnp.float32)
    if mem_t.shape[0] <= _CRD_MATMUL_ROWS_PER_INDEX * idx.shape[1]:
        # Few rows per drawn index: scoring every row with one matmul and picking the drawn
        # ones is much cheaper than gathering a [B, K + 1, D] copy of the banks (same values).
        l_s = jnp.take_along_axis(jnp.matmul(s, mem_t.T, precision=_HIGHEST), idx, axis=1)
        l_t = jnp.take_along_axis(jnp.matmul(t, mem_s.T, precision=_HIGHEST), idx, axis=1)
        return l_s, l_t
    l_s = jnp.einsum("bkd,bd->bk", mem_t[idx], s, precision=_HIGHEST)
    l_t = jnp.einsum("bkd,bd->bk", mem_s[idx], t, precision=_HIGHEST)
    return l_s, l_t


def _crd_z(logits: jax.Array, valid: jax.Array, temperature, num_data: int) -> jax.Array:
    """``mean(exp(l / T)) * N`` over the selected rows (RepDistiller's first-batch Z)."""
    e = jnp.exp(logits / temperature)
    rows = jnp.mean(e, axis=1)
    z = _weighted_mean(rows, valid.astype(jnp.float32)) * num_data
    return jax.lax.stop_gradient(jnp.where(z > 0, z, 1.0))


def crd_normalization_constants(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    memory_student: jax.Array,
    memory_teacher: jax.Array,
    indices: jax.Array,
    contrast_idx: jax.Array,
    *,
    temperature: float = 0.07,
    num_data: int,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """CRD's normalisation constants ``(z_s, z_t)``, float32 scalars (no gradient).

    ``z_s = N * mean_{b,k} exp(<memory_teacher[idx[b,k]], s_b> / T)`` and
    ``z_t = N * mean_{b,k} exp(<memory_student[idx[b,k]], t_b> / T)``, the mean taken over the
    selected examples and all ``K + 1`` columns (positive and negatives). RepDistiller computes
    them once, on the first training batch (with the freshly initialised banks), and keeps them
    fixed for the whole run: call this on the first batch, store the two scalars in the train
    state, and pass them to every :func:`crd_loss` call. Arguments are as in :func:`crd_loss`.
    """
    fn = "crd_normalization_constants"
    _check_positive(fn, "temperature", temperature)
    _crd_check(fn, student_emb, teacher_emb, memory_student, memory_teacher, indices,
               contrast_idx, num_data)
    valid = _example_weights(fn, mask, student_emb.shape[0]) != 0
    l_s, l_t = _crd_logits(student_emb, teacher_emb, memory_student, memory_teacher, indices,
                           contrast_idx, valid)
    return _crd_z(l_s, valid, temperature, num_data), _crd_z(l_t, valid, temperature, num_data)


def _crd_nce(logits: jax.Array, log_z: jax.Array, temperature, num_data: int) -> jax.Array:
    """Per-example NCE loss (RepDistiller's ``ContrastLoss``, CRD eq. 18), ``[B]``.

    With ``P = exp(l / T) / Z`` and noise mass ``c = K / N``:
    ``-[log(P_0 / (P_0 + c + eps)) + sum_k log(c / (P_k + c + eps))]``, evaluated in log space.
    """
    k = logits.shape[1] - 1
    c = k / num_data
    log_p = logits / temperature - log_z
    log_denom = jnp.logaddexp(log_p, math.log(c + _CRD_EPS))
    log_d1 = log_p[:, 0] - log_denom[:, 0]
    log_d0 = math.log(c) - log_denom[:, 1:]
    return -(log_d1 + jnp.sum(log_d0, axis=1))


def crd_loss(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    memory_student: jax.Array,
    memory_teacher: jax.Array,
    indices: jax.Array,
    contrast_idx: jax.Array,
    *,
    temperature: float = 0.07,
    num_data: int,
    z_s: float | jax.Array | None,
    z_t: float | jax.Array | None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Contrastive representation distillation (Tian et al., 2020), NCE with memory banks.

    The symmetric loss of RepDistiller's ``CRDLoss``: (a) the student embedding ``s_b`` is the
    anchor and its positive / negatives are rows of the *teacher* bank at ``indices[b]`` /
    ``contrast_idx[b]``; (b) the teacher embedding ``t_b`` is the anchor against the *student*
    bank. Each side scores ``P = exp(<m, e> / T) / Z`` and pays the NCE loss (CRD eq. 18)
    ``-[log(P_pos / (P_pos + K/N + eps)) + sum_k log((K/N) / (P_k + K/N + eps))]`` with
    ``eps = 1e-7``.

    Normalisation: per example the sum of both sides (each summed over its ``K + 1`` terms), then
    the (masked) mean over examples, i.e. ``s_loss + t_loss`` of the reference, each of which
    divides its batch sum by ``B``. Benchmark: weight 0.8, ``K = 16384``, ``T = 0.07``,
    embedding dim 128, memory momentum 0.5.

    Embeddings: ``student_emb`` and ``teacher_emb`` are the outputs of the two projection heads
    (``jaxkd.kd.adapters.LinearEmbed``); they are L2-normalised here again, which changes
    nothing (value or gradient) for already unit-norm inputs. ``teacher_emb`` is NOT wrapped in
    ``stop_gradient``: in CRD the teacher-side head is trained by this loss. Stop the gradient
    at the teacher's *features*, before the head. The memory banks receive no gradient.

    Normalisation constants: ``z_s`` (student-anchored scores) and ``z_t`` (teacher-anchored)
    are required keyword arguments. Pass the values of :func:`crd_normalization_constants` from
    the first batch, as RepDistiller does (it sets them once and never updates them). Passing
    ``None`` estimates that side's Z from the current batch instead (with ``stop_gradient``),
    which equals the reference on its first batch only.

    Memory: after the step, update the banks with :func:`crd_update_memory`
    (student bank <- student embeddings, teacher bank <- teacher embeddings).

    Args:
      student_emb: ``[B, D]`` projected student embedding.
      teacher_emb: ``[B, D]`` projected teacher embedding.
      memory_student: ``[N, D]`` student bank.
      memory_teacher: ``[N, D]`` teacher bank.
      indices: ``[B]`` integer dataset indices of the examples (the positives).
      contrast_idx: ``[B, K]`` integer negative indices (:func:`crd_sample_negatives`).
      temperature: ``T > 0``.
      num_data: ``N``, the dataset size (the banks' row count; the noise distribution is
        uniform, ``P_n = 1 / N``).
      z_s: normalisation constant for the student-anchored scores, or ``None``.
      z_t: normalisation constant for the teacher-anchored scores, or ``None``.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "crd_loss"
    _check_positive(fn, "temperature", temperature)
    _check_positive(fn, "z_s", z_s)
    _check_positive(fn, "z_t", z_t)
    _crd_check(fn, student_emb, teacher_emb, memory_student, memory_teacher, indices,
               contrast_idx, num_data)
    w = _example_weights(fn, mask, student_emb.shape[0])
    valid = w != 0
    l_s, l_t = _crd_logits(student_emb, teacher_emb, memory_student, memory_teacher, indices,
                           contrast_idx, valid)
    zs = _crd_z(l_s, valid, temperature, num_data) if z_s is None else z_s
    zt = _crd_z(l_t, valid, temperature, num_data) if z_t is None else z_t
    log_zs = jnp.log(jax.lax.stop_gradient(jnp.asarray(zs, jnp.float32)))
    log_zt = jnp.log(jax.lax.stop_gradient(jnp.asarray(zt, jnp.float32)))
    per_example = (_crd_nce(l_s, log_zs, temperature, num_data)
                   + _crd_nce(l_t, log_zt, temperature, num_data))
    loss = _weighted_mean(per_example, w)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Variational information distillation.
# --------------------------------------------------------------------------------------------


def vid_loss(
    student_mean: jax.Array,
    teacher_feat: jax.Array,
    alpha: jax.Array,
    *,
    eps: float = 1e-5,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Variational information distillation (Ahn et al., 2019).

    The teacher feature is modelled as a Gaussian with mean ``mu`` (the student feature passed
    through a regressor, ``jaxkd.kd.adapters.VIDRegressor``) and a learned per-channel variance
    ``var = softplus(alpha) + eps``; the loss is the negative log-likelihood without the
    constant, ``0.5 * (log var + (t - mu)^2 / var)``.

    Normalisation: mean over all positions and channels per example, then the (masked) mean over
    examples: RepDistiller's ``VIDLoss`` (``torch.mean`` of the NLL) when unmasked. Benchmark
    weight 1. Gradients flow into ``student_mean`` and ``alpha``.

    Args:
      student_mean: ``[B, ..., C]`` predicted mean (``[B, H, W, C]`` or ``[B, C]``).
      teacher_feat: ``[B, ..., C]`` teacher feature, same shape.
      alpha: ``[C]`` variance parameter (``VIDRegressor`` initialises it so that the variance
        starts at 5).
      eps: variance floor, ``> 0``.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "vid_loss"
    _check_positive(fn, "eps", eps)
    _check_float_array(fn, "student_mean", student_mean)
    _check_float_array(fn, "teacher_feat", teacher_feat)
    _check_float_array(fn, "alpha", alpha, ranks=(1,))
    if student_mean.shape != teacher_feat.shape:
        raise _shape_error(fn, "student_mean", student_mean.shape, "teacher_feat",
                           teacher_feat.shape,
                           "produce the mean with jaxkd.kd.adapters.VIDRegressor("
                           f"out_channels={teacher_feat.shape[-1]}) at the teacher's resolution")
    if alpha.shape != (teacher_feat.shape[-1],):
        raise _shape_error(fn, "alpha", alpha.shape, "teacher_feat", teacher_feat.shape,
                           "alpha holds one value per teacher channel")
    w = _example_weights(fn, mask, teacher_feat.shape[0])
    valid = w != 0
    mu = _zero_masked(student_mean, valid)
    t = _zero_masked(jax.lax.stop_gradient(teacher_feat), valid)
    var = jax.nn.softplus(alpha.astype(jnp.float32)) + eps
    nll = 0.5 * (jnp.log(var) + (t - mu) ** 2 / var)
    loss = _weighted_mean(jnp.mean(_flatten(nll), axis=1), w)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Correlation congruence.
# --------------------------------------------------------------------------------------------


def _cc_kernel(x: jax.Array, gamma, p_order: int, kernel: str) -> jax.Array:
    x = _l2_normalize(x)
    sim = jnp.matmul(x, x.T, precision=_HIGHEST)
    if kernel == "bilinear":
        return sim
    # exp(-gamma ||a - b||^2) = exp(-2 gamma) exp(2 gamma <a, b>) for unit a, b, with the second
    # factor replaced by its Taylor polynomial of order P.
    out = jnp.zeros_like(sim)
    power = jnp.ones_like(sim)
    for p in range(p_order + 1):
        out = out + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * power
        power = power * sim
    return out


def cc_loss(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    gamma: float = 0.4,
    p_order: int = 2,
    kernel: str = "gaussian",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Correlation congruence (Peng et al., 2019): match the batch's example-correlation matrices.

    Embeddings are L2-normalised and the ``n x n`` correlation matrix is built with a kernel:

    * ``"gaussian"`` (default): the Gaussian RBF ``exp(-gamma ||a - b||^2)`` approximated by its
      order-``P`` Taylor expansion, ``sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! <a, b>^p``
      (the paper's approximation, as in the ``CC(gamma, P_order)`` modules of public KD zoos;
      defaults ``gamma = 0.4``, ``P = 2``);
    * ``"bilinear"``: the cosine ``<a, b>``.

    Loss: mean squared difference of the two matrices over the ``n x n`` pairs of selected
    examples (``F.mse_loss``). Note that RepDistiller's ``Correlation`` module (benchmark weight
    0.02) computes a different quantity, ``mean_i sum_d |s-t|_i |s-t|_{i+1}``; its weight does
    not transfer to this loss.

    Args:
      student_emb: ``[B, D]`` (rank > 2 is flattened).
      teacher_emb: ``[B, D']`` (rank > 2 is flattened); the widths may differ.
      gamma: RBF bandwidth, ``> 0`` (unused for the bilinear kernel).
      p_order: Taylor order ``P``, an int ``>= 0``.
      kernel: ``"gaussian"`` or ``"bilinear"``.
      mask: optional ``[B]``; examples with ``mask == 0`` are excluded.

    Returns:
      scalar float32.
    """
    fn = "cc_loss"
    if kernel not in ("gaussian", "bilinear"):
        raise ValueError(f"{fn}: kernel must be 'gaussian' or 'bilinear', got {kernel!r}")
    if not _is_concrete_number(gamma):
        raise ValueError(f"{fn}: gamma must be a Python number, got {type(gamma).__name__}")
    _check_positive(fn, "gamma", gamma)
    if not _is_int(p_order) or p_order < 0:
        raise ValueError(f"{fn}: p_order must be an int >= 0, got {p_order!r}")
    _check_float_array(fn, "student_emb", student_emb)
    _check_float_array(fn, "teacher_emb", teacher_emb)
    _check_same_batch(fn, "student_emb", student_emb, "teacher_emb", teacher_emb)
    valid = _example_weights(fn, mask, student_emb.shape[0]) != 0
    k_s = _cc_kernel(_zero_masked(_flatten(student_emb), valid), gamma, p_order, kernel)
    k_t = _cc_kernel(_zero_masked(_flatten(jax.lax.stop_gradient(teacher_emb)), valid), gamma,
                     p_order, kernel)
    pair = valid[:, None] & valid[None, :]
    diff = jnp.where(pair, k_s - k_t, 0.0)
    n = jnp.sum(valid.astype(jnp.float32))
    loss = jnp.sum(diff * diff) / jnp.maximum(n * n, 1.0)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Inter-channel correlation.
# --------------------------------------------------------------------------------------------


def _channel_gram(f: jax.Array) -> jax.Array:
    f = f.reshape(f.shape[0], -1, f.shape[-1])  # [B, P, C]
    g = jnp.einsum("bpc,bpd->bcd", f, f, precision=_HIGHEST)
    return _l2_normalize(g, axis=2)


def ickd_loss(
    student_feat: jax.Array,
    teacher_feat: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Inter-channel correlation KD (ICKD-C, Liu et al., 2021).

    Per example, the channel Gram matrix ``G = F^T F`` (``C x C``, ``F`` the ``[H*W, C]``
    positions-by-channels matrix) with each row L2-normalised; the loss is
    ``||G_s - G_t||_F^2 / C`` per example, then the (masked) mean over examples, i.e. the
    authors' ``ICKDLoss.batch_loss`` (``sum / (C * B)``); equivalently ``C`` times the MSE over
    the ``C x C`` entries.

    The channel counts must match (the authors map the student with a 1x1 conv + BN:
    ``jaxkd.kd.adapters.ConvRegressor(out_channels=C_t, relu=False)``); the spatial sizes may
    differ, since positions are summed out.

    Args:
      student_feat: ``[B, H, W, C]`` (any ``[B, ..., C]``).
      teacher_feat: ``[B, H', W', C]``.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "ickd_loss"
    _check_float_array(fn, "student_feat", student_feat)
    _check_float_array(fn, "teacher_feat", teacher_feat)
    _check_same_batch(fn, "student_feat", student_feat, "teacher_feat", teacher_feat)
    if student_feat.ndim < 2 or student_feat.shape[-1] != teacher_feat.shape[-1]:
        raise _shape_error(fn, "student_feat", student_feat.shape, "teacher_feat",
                           teacher_feat.shape,
                           "channel counts must match; map the student with "
                           "jaxkd.kd.adapters.ConvRegressor("
                           f"out_channels={teacher_feat.shape[-1]}, relu=False) first")
    w = _example_weights(fn, mask, student_feat.shape[0])
    valid = w != 0
    g_s = _channel_gram(_zero_masked(student_feat, valid))
    g_t = _channel_gram(_zero_masked(jax.lax.stop_gradient(teacher_feat), valid))
    c = teacher_feat.shape[-1]
    per_example = jnp.sum(((g_s - g_t) ** 2).reshape(g_s.shape[0], -1), axis=1) / c
    loss = _weighted_mean(per_example, w)
    chex.assert_shape(loss, ())
    return loss


# --------------------------------------------------------------------------------------------
# Factor transfer.
# --------------------------------------------------------------------------------------------


def factor_transfer_loss(
    student_factor: jax.Array,
    teacher_factor: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Factor transfer (Kim et al., 2018): L1 between L2-normalised factors.

    ``student_factor`` is the output of the student's translator
    (``jaxkd.kd.adapters.Translator``); ``teacher_factor`` the encoder output of the teacher's
    paraphraser (``jaxkd.kd.adapters.Paraphraser``, pre-trained to reconstruct the teacher
    feature and then frozen). Each factor is flattened to ``[B, -1]`` and L2-normalised; the
    loss is ``mean |n_s - n_t|`` over the flattened elements per example, then the (masked) mean
    over examples (``F.l1_loss`` on the normalised factors, as in the authors' ``FTLoss``).
    Benchmark weight 200. RepDistiller's ``FactorTransfer`` criterion instead pools the factors
    into AT-style spatial maps before normalising; this follows the paper.

    Args:
      student_factor: ``[B, H, W, C_f]``.
      teacher_factor: ``[B, H, W, C_f]``, same shape.
      mask: optional ``[B]`` example weights.

    Returns:
      scalar float32.
    """
    fn = "factor_transfer_loss"
    _check_float_array(fn, "student_factor", student_factor)
    _check_float_array(fn, "teacher_factor", teacher_factor)
    if student_factor.shape != teacher_factor.shape:
        raise _shape_error(fn, "student_factor", student_factor.shape, "teacher_factor",
                           teacher_factor.shape,
                           "build jaxkd.kd.adapters.Translator(factor_channels="
                           f"{teacher_factor.shape[-1]}) for the student at the teacher's "
                           "resolution")
    w = _example_weights(fn, mask, teacher_factor.shape[0])
    valid = w != 0
    n_s = _l2_normalize(_flatten(_zero_masked(student_factor, valid)))
    n_t = _l2_normalize(_flatten(_zero_masked(jax.lax.stop_gradient(teacher_factor), valid)))
    loss = _weighted_mean(jnp.mean(jnp.abs(n_s - n_t), axis=1), w)
    chex.assert_shape(loss, ())
    return loss


__all__ = [
    "attention_map",
    "attention_transfer_loss",
    "cc_loss",
    "crd_init_memory",
    "crd_loss",
    "crd_normalization_constants",
    "crd_sample_negatives",
    "crd_update_memory",
    "factor_transfer_loss",
    "fitnet_loss",
    "ickd_loss",
    "pkt_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "vid_loss",
]
