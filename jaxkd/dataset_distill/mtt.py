"""Matching Training Trajectories (MTT, Cazenavette et al. 2022) and its DATM options.

One distillation iteration:

1. pick an expert ``k`` and a start epoch ``t ~ U[lo, hi)``; ``theta_0 = theta*_{k,t}``;
2. take ``N = syn_steps`` SGD steps on minibatches of the (DSA-augmented) synthetic set with the
   learnable learning rate ``alpha``: ``theta_{i+1} = theta_i - alpha * grad CE(theta_i; S_i)``;
3. loss ``|theta_N - theta*_{k,t+M}|^2 / |theta*_{k,t} - theta*_{k,t+M}|^2`` with
   ``M = expert_epochs``;
4. the exact hypergradient of the loss with respect to the images, ``alpha`` and (DATM) the
   label logits, by :class:`jaxkd.dataset_distill.unroll.Unroller` (memory flat in ``N``).

DATM (Guo et al. 2024) options: the upper end of the start-epoch window grows linearly from
``max_start_epoch`` to ``max_start_epoch_final`` over the run; learnable soft labels (logits,
initialised from an expert's logits on real images it classifies correctly); iterations whose
loss exceeds ``skip_loss_above`` are not applied.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.core import errors
from jaxkd.dataset_distill.augment import DSAConfig, dsa
from jaxkd.dataset_distill.experts import Trajectories
from jaxkd.dataset_distill.nets import FlatModel
from jaxkd.dataset_distill.unroll import Unroller
from jaxkd.losses.dataset import soft_cross_entropy, trajectory_matching_loss

__all__ = ["MTTConfig", "TrajectoryMatching", "label_targets", "make_inner_step"]


@dataclasses.dataclass(frozen=True)
class MTTConfig:
    """Trajectory-matching settings (names as in the MTT/DATM code)."""

    syn_steps: int = 20
    expert_epochs: int = 2
    min_start_epoch: int = 0
    max_start_epoch: int = 2  # exclusive: t ~ U[min_start_epoch, max_start_epoch)
    max_start_epoch_final: int = 0  # DATM: grow the window's end to this (0 = fixed window)
    batch_syn: int = 0  # synthetic minibatch per inner step (0 = the whole set)
    hypergrad: str = "reverse"  # see jaxkd.dataset_distill.unroll.METHODS
    skip_loss_above: float = math.inf  # DATM: do not apply iterations with a larger loss

    def window(self, progress: float) -> tuple[int, int]:
        """``[lo, hi)`` of start epochs at ``progress`` in [0, 1] of the run."""
        hi = self.max_start_epoch
        if self.max_start_epoch_final > hi:
            hi = int(round(hi + progress * (self.max_start_epoch_final - hi)))
        return self.min_start_epoch, max(hi, self.min_start_epoch + 1)


def label_targets(labels: jax.Array, soft: bool) -> jax.Array:
    """Class-probability rows from the synthetic set's label variable.

    Hard labels are stored as one-hot rows and used as they are; soft labels are logits.
    """
    return jax.nn.softmax(labels, axis=-1) if soft else labels


def make_inner_step(model: FlatModel, dsa_cfg: DSAConfig, *, soft: bool,
                    siamese: bool = False):
    """The inner SGD step ``(theta, hyper, aux) -> theta'`` on a synthetic minibatch.

    ``hyper``: ``{"images": [M, ...], "labels": [M, C], "lr": []}``; ``aux``:
    ``{"idx": int [b], "key": PRNG key}`` (minibatch and DSA key of this step). There is no real
    batch to pair with, so by default every synthetic image gets its own DSA parameters (as in
    the MTT code, which calls DSA without a seed).
    """

    def step(theta, hyper, aux):
        x = dsa(hyper["images"][aux["idx"]], aux["key"], dsa_cfg, siamese=siamese)
        y = label_targets(hyper["labels"][aux["idx"]], soft)
        g = jax.grad(lambda t: soft_cross_entropy(model.apply(t, x), y))(theta)
        return theta - hyper["lr"] * g

    return step


def _outer(theta_n, ctx):
    return trajectory_matching_loss(theta_n, ctx["start"], ctx["target"])


class TrajectoryMatching:
    """MTT / DATM as a distillation method for :mod:`jaxkd.dataset_distill.train`.

    ``loss_and_grad(syn, iteration, total)`` returns the matching loss, its exact gradient with
    respect to ``syn`` (same tree) and metrics, for a deterministic draw of expert, start epoch,
    minibatches and augmentation given ``(seed, iteration)``.
    """

    name = "mtt"
    learns_lr = True

    def __init__(self, model: FlatModel, trajectories: Trajectories, cfg: MTTConfig,
                 dsa_cfg: DSAConfig, *, soft: bool, seed: int):
        self.model, self.traj, self.cfg, self.soft, self.seed = model, trajectories, cfg, soft, seed
        if trajectories.num_params != model.num_params:
            raise errors.ConfigError(
                f"the experts in {trajectories.directory} have {trajectories.num_params} "
                f"parameters but config.model builds {model.num_params}; use experts of the "
                "same architecture")
        last_needed = max(cfg.max_start_epoch, cfg.max_start_epoch_final) - 1 + cfg.expert_epochs
        if last_needed > trajectories.epochs:
            raise errors.ConfigError(
                f"start epochs up to {last_needed - cfg.expert_epochs} plus expert_epochs="
                f"{cfg.expert_epochs} need epoch {last_needed}, beyond the saved trajectories "
                f"(epochs 0..{trajectories.epochs} in {trajectories.directory}); lower "
                "config.mtt.max_start_epoch(_final) or expert_epochs, or set "
                f"config.experts.epochs >= {last_needed}")
        self.unroller = Unroller(make_inner_step(model, dsa_cfg, soft=soft), _outer,
                                 method=cfg.hypergrad)

    def draw(self, iteration: int, total: int, num_syn: int) -> tuple[int, int, dict]:
        """``(expert, start epoch, aux)`` of iteration ``iteration`` of ``total``."""
        rng = np.random.default_rng([self.seed, 7, iteration])
        lo, hi = self.cfg.window(iteration / max(total - 1, 1))
        expert = int(rng.integers(self.traj.num_experts))
        start = int(rng.integers(lo, hi))
        batch = self.cfg.batch_syn or num_syn
        steps = self.cfg.syn_steps
        perms = np.concatenate([rng.permutation(num_syn)
                                for _ in range(-(-steps * batch // num_syn))])
        idx = perms[:steps * batch].reshape(steps, batch).astype(np.int32)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), iteration)
        return expert, start, {"idx": idx, "key": jax.random.split(key, steps)}

    def loss_and_grad(self, syn: dict, iteration: int, total: int) -> tuple[Any, dict, dict]:
        num_syn = syn["images"].shape[0]
        expert, start, aux = self.draw(iteration, total, num_syn)
        ctx = {"start": jnp.asarray(self.traj.params(expert, start)),
               "target": jnp.asarray(self.traj.params(expert, start + self.cfg.expert_epochs))}
        loss, grad, _ = self.unroller.value_and_grad(ctx["start"], syn, aux, ctx)
        return loss, grad, {"start_epoch": float(start)}

    def skip(self, loss: jax.Array) -> jax.Array:
        """True where DATM's outlier rule rejects the iteration."""
        return loss > self.cfg.skip_loss_above
