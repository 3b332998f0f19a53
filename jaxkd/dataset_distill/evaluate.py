"""The field's evaluation protocol for a synthetic set, and the baselines reported beside it.

Protocol (DC/DSA/DM/MTT papers): train fresh networks (the ConvNet of width 128, depth 3 with
instance norm by default) on the synthetic set only, with SGD (momentum 0.9, weight decay 5e-4,
learning rate x0.1 at half of training; the MTT family uses its learned learning rate), DSA
augmentation, and report the test accuracy after the LAST epoch as mean +- std over 5 fresh
networks; never the best epoch on the test set.

Baselines (same protocol, same networks):
- ``random``: a random real subset with ``ipc`` images per class (a new draw per network);
- ``class_mean``: per class, the mean real image (``ipc = 1``) or the ``ipc`` k-means centroids
  of the class's real images (``ipc > 1``; the class mean generalised);
- ``full``: the whole real training set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.nets import FlatModel, NetTrainer, SGDConfig

__all__ = ["EvalConfig", "class_means", "evaluate", "random_subset"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How fresh networks are trained on a (synthetic or baseline) set."""

    num_nets: int = 5
    epochs: float = 500.0
    sgd: SGDConfig = SGDConfig()
    dsa: DSAConfig = DSAConfig()
    seed: int = 10_000  # networks' seeds: seed .. seed + num_nets - 1 (apart from distillation's)


def evaluate(model: FlatModel, x: jax.Array, targets: jax.Array, x_test: jax.Array,
             labels_test: jax.Array, cfg: EvalConfig, *, lr: float | None = None,
             epochs: float | None = None, per_net: bool = False,
             relabel: Callable[[jax.Array], jax.Array] | None = None) -> np.ndarray:
    """Last-epoch test accuracy of ``cfg.num_nets`` fresh networks trained on ``(x, targets)``.

    Args:
      model: the evaluation architecture.
      x: ``[M, ...]`` training inputs (normalised), or ``[K, M, ...]`` with ``per_net``.
      targets: ``[M, C]`` class-probability rows (one-hot or soft), or ``[K, M, C]``.
      x_test, labels_test: the test split (normalised inputs, integer labels).
      cfg: the protocol's settings.
      lr: the learning rate (a learned one); default ``cfg.sgd.lr``.
      epochs: passes over the training set; default ``cfg.epochs``.
      per_net: network ``k`` trains on ``x[k]`` (e.g. a different random subset each).
      relabel: targets from the augmented batch instead of ``targets`` (a teacher's soft
        labels per crop, as SRe2L evaluates); see :class:`NetTrainer`.

    Returns:
      ``[K]`` accuracies in [0, 1].
    """
    trainer = NetTrainer(model, cfg.sgd, cfg.dsa, relabel=relabel)
    num = x.shape[1] if per_net else x.shape[0]
    _, steps = trainer.steps_for(num, cfg.epochs if epochs is None else epochs)
    thetas, vels = trainer.init(jax.random.key(cfg.seed), cfg.num_nets)
    thetas, _ = trainer.train(thetas, vels, x, targets, seed=cfg.seed, first_step=0,
                              num_steps=steps, total_steps=steps, lr=lr, per_net=per_net)
    return trainer.accuracy(thetas, x_test, labels_test)


def random_subset(labels: np.ndarray, ipc: int, num_classes: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Indices of ``ipc`` random examples of each class, class by class (``[C * ipc]``)."""
    out = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < ipc:
            raise ValueError(f"class {c} has {len(members)} training examples, fewer than "
                             f"ipc={ipc}")
        out.append(rng.choice(members, ipc, replace=False))
    return np.concatenate(out)


def class_means(x: np.ndarray, labels: np.ndarray, ipc: int, num_classes: int, *,
                seed: int = 0, iterations: int = 50) -> np.ndarray:
    """``[C * ipc, ...]``: per class the mean image (ipc 1) or ``ipc`` k-means centroids."""
    out = []
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        members = x[labels == c].reshape(int(np.sum(labels == c)), -1).astype(np.float64)
        if ipc == 1:
            out.append(members.mean(0, keepdims=True))
            continue
        centres = members[rng.choice(len(members), ipc, replace=False)]
        for _ in range(iterations):  # Lloyd's algorithm
            dist = ((members[:, None] - centres[None]) ** 2).sum(-1)
            assign = dist.argmin(1)
            for j in range(ipc):
                if np.any(assign == j):
                    centres[j] = members[assign == j].mean(0)
        out.append(centres)
    return np.concatenate(out).reshape(num_classes * ipc, *x.shape[1:]).astype(np.float32)


def one_hot(labels: np.ndarray, num_classes: int) -> jax.Array:
    """``[N, C]`` float32 one-hot rows."""
    return jnp.eye(num_classes, dtype=jnp.float32)[np.asarray(labels)]
