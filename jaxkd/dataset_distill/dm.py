"""Distribution Matching (DM, Zhao & Bilen 2023).

Each iteration draws a fresh randomly initialised network ``psi`` and, for every class ``c``,
a batch of real images ``R_c``; both ``R_c`` and the class's synthetic images ``S_c`` are
augmented with the same DSA transform (one key per class) and embedded by ``psi`` (the input of
its classifier). The loss is ``sum_c |mean psi(R_c) - mean psi(S_c)|^2`` and only the images
learn. No bilevel optimisation, so one iteration costs two forward/backward passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.augment import DSAConfig, dsa
from jaxkd.dataset_distill.nets import FlatModel, class_batches, image_grads
from jaxkd.losses.dataset import distribution_matching_loss

__all__ = ["DMConfig", "DistributionMatching"]


@dataclasses.dataclass(frozen=True)
class DMConfig:
    batch_real: int = 256  # real images per class per iteration (capped by the class size)


class DistributionMatching:
    """DM as a distillation method for :mod:`jaxkd.dataset_distill.train`."""

    name = "dm"
    learns_lr = False

    def __init__(self, model: FlatModel, x_real: jax.Array, y_real: np.ndarray,
                 num_classes: int, ipc: int, cfg: DMConfig, dsa_cfg: DSAConfig, *, seed: int):
        self.model, self.x_real, self.cfg, self.seed = model, x_real, cfg, seed
        self.num_classes, self.ipc = num_classes, ipc
        self.members = [np.flatnonzero(y_real == c) for c in range(num_classes)]
        self.batch_real = min(cfg.batch_real, min(len(m) for m in self.members))

        def loss_fn(images, theta, real, keys):
            # images [C * ipc, ...] class by class; real [C, R, ...]; keys [C].
            syn = images.reshape(num_classes, ipc, *images.shape[1:])

            def per_class(s, r, k):
                return distribution_matching_loss(model.embed(theta, dsa(r, k, dsa_cfg)),
                                                  model.embed(theta, dsa(s, k, dsa_cfg)))

            return jnp.sum(jax.vmap(per_class)(syn, real, keys))

        self._loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))

    def loss_and_grad(self, syn: dict, iteration: int, total: int) -> tuple[Any, dict, dict]:
        del total
        idx = class_batches(self.members, self.batch_real, self.seed, iteration)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), iteration)
        k_net, k_aug = jax.random.split(key)
        theta = self.model.init(k_net)
        loss, g_images = self._loss_and_grad(syn["images"], theta, self.x_real[idx],
                                             jax.random.split(k_aug, self.num_classes))
        return loss, image_grads(syn, g_images), {}

    def skip(self, loss: jax.Array) -> jax.Array:
        return jnp.zeros((), bool)
