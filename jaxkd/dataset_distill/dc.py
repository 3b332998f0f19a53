"""Dataset Condensation with gradient matching (DC, Zhao et al. 2021) and DSA (Zhao & Bilen 2021).

One outer iteration draws a fresh randomly initialised network ``theta`` and alternates, for
``outer_loop`` rounds:

1. for every class ``c``: the gradient of the cross-entropy of ``theta`` on a batch of real
   images of ``c`` and on the synthetic images of ``c``; the loss is the sum over classes of
   :func:`jaxkd.losses.dataset.gradient_matching_distance` (per layer, per output unit,
   ``1 - cos``), and its gradient (a second-order derivative through the synthetic gradient)
   updates the images;
2. unless this was the last round, ``theta`` takes ``inner_loop`` epochs of plain SGD
   (``lr_net``) on the updated synthetic set.

DSA is the same method with differentiable siamese augmentation: each class's real and
synthetic batches are augmented with the same random parameters before the gradients, and the
inner training augments too. With ``config.dsa.strategy=""`` this is DC.

Each image update is one driver iteration: iteration ``i`` is round ``i % outer_loop`` of outer
iteration ``i // outer_loop``. The network travels between iterations as the method's *carry*
(``init_carry`` / the fourth argument and result of ``loss_and_grad``), which the driver keeps in
its checkpointed state, so an interrupted run resumes exactly. The inner training of round
``r > 0`` runs at the start of iteration ``r``, on the images as the previous update left them,
which is the order of the reference code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.augment import DSAConfig, dsa
from jaxkd.dataset_distill.nets import (FlatModel, batch_indices, class_batches,
                                        has_2d_convolution, image_grads)
from jaxkd.losses.dataset import gradient_matching_distance, soft_cross_entropy

__all__ = ["DCConfig", "GradientMatching", "DC_LOOPS"]

# The reference code's (outer_loop, inner_loop) by images per class.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


@dataclasses.dataclass(frozen=True)
class DCConfig:
    """Gradient-matching settings (names as in the DC/DSA code)."""

    outer_loop: int = 10  # image updates per fresh network
    inner_loop: int = 50  # epochs of network training on the synthetic set between updates
    batch_real: int = 256  # real images per class per update (capped by the class size)
    batch_train: int = 256  # minibatch of the inner network training
    lr_net: float = 0.01  # inner network SGD learning rate (no momentum, as the reference)


class GradientMatching:
    """DC / DSA as a distillation method for :mod:`jaxkd.dataset_distill.train`."""

    name = "dc"
    learns_lr = False

    def __init__(self, model: FlatModel, x_real: jax.Array, y_real: np.ndarray,
                 num_classes: int, ipc: int, cfg: DCConfig, dsa_cfg: DSAConfig, *, seed: int,
                 per_class_calls: bool | None = None):
        if cfg.outer_loop < 1 or cfg.inner_loop < 0:
            raise ValueError(f"outer_loop={cfg.outer_loop} must be >= 1 and "
                             f"inner_loop={cfg.inner_loop} >= 0")
        self.model, self.x_real, self.cfg, self.seed = model, x_real, cfg, seed
        self.num_classes, self.ipc = num_classes, ipc
        self.members = [np.flatnonzero(y_real == c) for c in range(num_classes)]
        self.batch_real = min(cfg.batch_real, min(len(m) for m in self.members))
        self.batch_train = min(cfg.batch_train, num_classes * ipc)
        eye = jnp.eye(num_classes)

        def ce_grad(theta, x, c):
            y = jnp.broadcast_to(eye[c], (x.shape[0], num_classes))
            return jax.grad(lambda t: soft_cross_entropy(model.apply(t, x), y))(theta)

        def per_class(s, theta, r, k, c):
            # One class's distance: synthetic images s [ipc, ...], real r [R, ...], DSA key k.
            g_real = jax.lax.stop_gradient(ce_grad(theta, dsa(r, k, dsa_cfg), c))
            g_syn = ce_grad(theta, dsa(s, k, dsa_cfg), c)
            return gradient_matching_distance(model.unravel(g_syn), model.unravel(g_real))

        def loss_fn(images, theta, real, keys):
            # images [C * ipc, ...] class by class; real [C, R, ...]; keys [C].
            syn = images.reshape(num_classes, ipc, *images.shape[1:])
            return jnp.sum(jax.vmap(per_class, in_axes=(0, None, 0, 0, 0))(
                syn, theta, real, keys, jnp.arange(num_classes)))

        # The loss is a sum over classes and each class's images enter only its own term, so
        # the image gradient can be taken class by class. vmapping over classes makes the
        # weight gradients of a 2-D convolution grouped convolutions, which XLA:CPU runs slowly
        # (one DSA image update on digits at ipc 50: 3.8x slower vmapped, benchmarks/vmap_vs_loop.py);
        # models with 2-D convolutions therefore take one compiled per-class call per class.
        self.per_class = has_2d_convolution(model) if per_class_calls is None else (
            per_class_calls)
        self._loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))
        self._class_loss_and_grad = jax.jit(jax.value_and_grad(per_class))

        def train_step(theta, x, y, key):
            x = dsa(x, key, dsa_cfg)
            g = jax.grad(lambda t: soft_cross_entropy(model.apply(t, x), y))(theta)
            return theta - cfg.lr_net * g

        self._train_step = jax.jit(train_step, donate_argnums=0)
        self._labels = jnp.repeat(eye, ipc, axis=0)

    def init_carry(self) -> dict:
        """The network of the current outer iteration (replaced at each one's first round)."""
        return {"theta": self.model.init(jax.random.PRNGKey(0))}

    def _key(self, iteration: int, tag: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), iteration),
                                  tag)

    def train_net(self, theta: jax.Array, images: jax.Array, iteration: int) -> jax.Array:
        """``inner_loop`` epochs of SGD on ``images`` (augmented with DSA when it is on)."""
        num = images.shape[0]
        steps_per_epoch = -(-num // self.batch_train)
        rng = np.random.default_rng([self.seed, 12, iteration])
        order = batch_indices(rng, num, self.batch_train, self.cfg.inner_loop * steps_per_epoch)
        theta = jnp.array(theta)  # the step donates its input
        for step, idx in enumerate(order):
            theta = self._train_step(theta, images[idx], self._labels[idx],
                                     self._key(iteration, 1000 + step))
        return theta

    def matching_loss_and_grad(self, images: jax.Array, theta: jax.Array, real: jax.Array,
                               keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The summed per-class distance and its gradient with respect to ``images``.

        ``images [C * ipc, ...]`` class by class, ``real [C, R, ...]``, ``keys [C]`` (one DSA
        key per class, shared by its real and synthetic batches).
        """
        if not self.per_class:
            return self._loss_and_grad(images, theta, real, keys)
        syn = images.reshape(self.num_classes, self.ipc, *images.shape[1:])
        out = [self._class_loss_and_grad(syn[c], theta, real[c], keys[c], c)
               for c in range(self.num_classes)]
        return sum(o[0] for o in out), jnp.concatenate([o[1] for o in out])

    def loss_and_grad(self, syn: dict, iteration: int, total: int,
                      carry: dict) -> tuple[Any, dict, dict, dict]:
        del total
        outer, round_ = divmod(iteration, self.cfg.outer_loop)
        if round_ == 0:
            theta = self.model.init(jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), outer))
        else:
            theta = self.train_net(carry["theta"], syn["images"], iteration)
        idx = class_batches(self.members, self.batch_real, self.seed, iteration)
        loss, g_images = self.matching_loss_and_grad(
            syn["images"], theta, self.x_real[idx],
            jax.random.split(self._key(iteration, 0), self.num_classes))
        return loss, image_grads(syn, g_images), {}, {"theta": theta}

    def skip(self, loss: jax.Array) -> jax.Array:
        return jnp.zeros((), bool)
