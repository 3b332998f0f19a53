"""Dataset-distillation losses (pure functions).

Nothing here knows about models or optimisers; arithmetic is float32 whatever the input dtype.

- :func:`soft_cross_entropy`: cross-entropy against target distributions (hard labels are
  one-hot rows), the inner loss of every method here.
- :func:`trajectory_matching_loss`: MTT's normalised parameter distance.
- :func:`gradient_matching_distance`: DC's layer-wise sum of ``1 - cos`` between gradients.
- :func:`distribution_matching_loss`: DM's squared distance between per-class mean embeddings.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "distribution_matching_loss",
    "gradient_matching_distance",
    "soft_cross_entropy",
    "trajectory_matching_loss",
]


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of ``-sum_c targets[b, c] * log_softmax(logits)[b, c]``.

    Args:
      logits: ``[B, C]``.
      targets: ``[B, C]`` rows of class probabilities (one-hot for hard labels).

    Returns:
      scalar float32.
    """
    chex.assert_equal_shape([logits, targets])
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(targets.astype(jnp.float32) * log_p, axis=-1))


def trajectory_matching_loss(theta_n: jax.Array, theta_start: jax.Array,
                             theta_target: jax.Array) -> jax.Array:
    """MTT's loss ``|theta_N - theta*_{t+M}|^2 / |theta*_t - theta*_{t+M}|^2``.

    Args:
      theta_n: ``[P]`` parameters after ``N`` steps on the synthetic data from ``theta_start``.
      theta_start: ``[P]`` the expert's parameters at the start epoch ``t``.
      theta_target: ``[P]`` the expert's parameters ``M`` epochs later.

    Returns:
      scalar float32 (1 when the synthetic steps do not move ``theta_start`` at all).
    """
    chex.assert_equal_shape([theta_n, theta_start, theta_target])
    f32 = lambda a: a.astype(jnp.float32)
    num = jnp.sum(jnp.square(f32(theta_n) - f32(theta_target)))
    den = jnp.sum(jnp.square(f32(theta_start) - f32(theta_target)))
    return num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny)


def _output_major(g: jax.Array) -> jax.Array:
    """A Flax kernel ``[..., in, out]`` as ``[out, rest]`` (PyTorch's layout, flattened)."""
    return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def _safe_norm(a: jax.Array) -> jax.Array:
    """Row norms whose gradient at an all-zero row is 0 (as PyTorch's), not NaN.

    Zero rows are common: a ReLU unit that is dead on a batch has an all-zero kernel gradient.
    """
    sq = jnp.sum(a * a, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def gradient_matching_distance(grads_syn: Any, grads_real: Any) -> jax.Array:
    """DC's gradient distance: ``sum over kernels, sum over output units of (1 - cos)``.

    For every parameter leaf with at least two axes (Flax kernels ``[..., in, out]``: dense
    ``[in, out]``, conv ``[kh, kw, in, out]``), both gradients are viewed as ``[out, rest]`` and
    the cosine is taken per output unit, as in Zhao et al.'s ``distance_wb`` (``'ours'``).
    One-axis leaves (biases, norm scales) are skipped, as there.

    Args:
      grads_syn, grads_real: pytrees of identical structure and shapes.

    Returns:
      scalar float32.
    """
    chex.assert_trees_all_equal_shapes(grads_syn, grads_real)
    total = jnp.float32(0.0)
    for gs, gr in zip(jax.tree.leaves(grads_syn), jax.tree.leaves(grads_real)):
        if gs.ndim < 2:
            continue
        a = _output_major(gs.astype(jnp.float32))
        b = _output_major(gr.astype(jnp.float32))
        dot = jnp.sum(a * b, axis=-1)
        norms = _safe_norm(a) * _safe_norm(b)
        total += jnp.sum(1.0 - dot / (norms + 1e-6))
    return total


def distribution_matching_loss(emb_real: jax.Array, emb_syn: jax.Array) -> jax.Array:
    """DM: ``|mean(emb_real) - mean(emb_syn)|^2`` for one class (sum the result over classes).

    Args:
      emb_real: ``[R, D]`` embeddings of real examples of one class.
      emb_syn: ``[S, D]`` embeddings of that class's synthetic examples (same network).

    Returns:
      scalar float32.
    """
    chex.assert_rank([emb_real, emb_syn], 2)
    diff = jnp.mean(emb_real.astype(jnp.float32), 0) - jnp.mean(emb_syn.astype(jnp.float32), 0)
    return jnp.sum(jnp.square(diff))
