"""Squeeze, recover, relabel (SRe2L, Yin et al. 2023) and its curriculum (CDA, Yin & Shen 2024).

1. **Squeeze**: train a teacher with BatchNorm on the real data (:func:`train_teacher`).
2. **Recover**: optimise synthetic images (from noise) so that the teacher classifies them as
   their class and the batch statistics they induce at every BatchNorm layer match the
   teacher's running statistics:

       loss = CE(teacher(A(x)), y)
              + r_bn * sum_l (|mu_l(A(x)) - mu_l^BN|_2 + |var_l(A(x)) - var_l^BN|_2)

   with the teacher in inference mode and ``A`` a random resized crop. SRe2L draws the crop's
   area fraction from ``[crop_min_scale, 1]``; CDA's curriculum starts with whole images and
   lowers the minimum from 1 to ``crop_min_scale`` over the run (easy to hard).
3. **Relabel**: the synthetic set's labels are the teacher's soft labels,
   ``softmax(teacher(x) / T)``, so a SRe2L set is a soft-label result and is reported apart
   from hard-label ones.

   With ``relabel="crop"`` (default, as the papers) the evaluation networks are trained on the
   teacher's soft labels of each augmented batch they see (FKD-style per-crop labels, computed
   on the fly rather than stored); ``relabel="image"`` uses one soft label per whole image
   (the labels stored in ``synthetic.npz`` either way).

Differences from the papers, stated: the evaluation's augmentation is the protocol's DSA rather
than random resized crops, and there is no flip (digits are not flipped).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxkd.core import report
from jaxkd.dataset_distill.augment import affine_warp
from jaxkd.dataset_distill.nets import batch_indices, image_grads
from jaxkd.losses.dataset import soft_cross_entropy

__all__ = ["SRe2LConfig", "StatisticsRecovery", "bn_statistics", "bn_matching_loss",
           "random_resized_crop", "train_teacher"]


@dataclasses.dataclass(frozen=True)
class SRe2LConfig:
    """Recovery settings (``r_bn`` and the crop scale as in the papers' code)."""

    r_bn: float = 0.01  # weight of the BatchNorm statistics term
    crop_min_scale: float = 0.08  # smallest crop area fraction
    curriculum: bool = False  # CDA: the minimum falls linearly from 1 to crop_min_scale
    temperature: float = 1.0  # relabelling temperature
    relabel: str = "crop"  # "crop": teacher labels per augmented batch at evaluation; "image"


def bn_statistics(model: nn.Module, variables: Any, x: jax.Array,
                  ) -> tuple[jax.Array, list[tuple[jax.Array, ...]]]:
    """Logits of ``model`` in inference mode, and per BatchNorm layer ``(mean, var, running mean,
    running var)`` of the layer's input over all but the channel axis (biased variance, as the
    running statistics' target)."""
    records: list[tuple[jax.Array, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            h = args[0]
            axes = tuple(range(h.ndim - 1))
            records.append((jnp.mean(h, axes), jnp.var(h, axes),
                            context.module.get_variable("batch_stats", "mean"),
                            context.module.get_variable("batch_stats", "var")))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, x, train=False)
    return logits, records


def bn_matching_loss(records: list[tuple[jax.Array, ...]]) -> jax.Array:
    """``sum_l |mu_l - mu_l^BN|_2 + |var_l - var_l^BN|_2`` over :func:`bn_statistics` records."""
    if not records:
        raise ValueError("the teacher has no BatchNorm layer: SRe2L matches BatchNorm "
                         "statistics (use a model with norm='batch')")
    return sum(jnp.linalg.norm(m - rm) + jnp.linalg.norm(v - rv) for m, v, rm, rv in records)


def random_resized_crop(x: jax.Array, key: jax.Array, min_scale: jax.Array | float,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Per image: a crop of area fraction ``U[min_scale, 1]`` and aspect ratio log-uniform in
    ``ratio``, at a uniform position inside the image, resized back to ``[H, W]`` (bilinear);
    differentiable in ``x``. Signals ``[B, L, C]``: a segment of length fraction
    ``U[min_scale, 1]`` resized back to ``L`` (linear; ``ratio`` unused)."""
    b = x.shape[0]
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = jax.random.uniform(k_area, (b,), minval=min_scale, maxval=1.0)
    u = jax.random.uniform(k_pos, (b, 2), minval=-1.0, maxval=1.0)
    if x.ndim == 3:  # a signal is an image of height 1 whose crop keeps that row
        sx, sy = area, jnp.ones_like(area)
    else:
        log_r = jax.random.uniform(k_ratio, (b,), minval=np.log(ratio[0]),
                                   maxval=np.log(ratio[1]))
        r = jnp.exp(log_r)
        sx = jnp.clip(jnp.sqrt(area * r), 0.0, 1.0)  # crop width / image width
        sy = jnp.clip(jnp.sqrt(area / r), 0.0, 1.0)
    cx, cy = u[:, 0] * (1.0 - sx), u[:, 1] * (1.0 - sy)  # the box stays inside [-1, 1]
    zero = jnp.zeros_like(sx)
    theta = jnp.stack([jnp.stack([sx, zero, cx], -1), jnp.stack([zero, sy, cy], -1)], 1)
    if x.ndim == 3:
        return affine_warp(x[:, None], theta)[:, 0]
    return affine_warp(x, theta)


class StatisticsRecovery:
    """The recover stage as a distillation method for :mod:`jaxkd.dataset_distill.train`."""

    name = "sre2l"
    learns_lr = False

    def __init__(self, teacher: nn.Module, variables: Any, num_classes: int, ipc: int,
                 cfg: SRe2LConfig, *, seed: int):
        self.cfg, self.seed = cfg, seed
        self.teacher, self.variables = teacher, variables
        y = jnp.repeat(jnp.eye(num_classes), ipc, axis=0)

        def loss_fn(images, key, min_scale):
            x = random_resized_crop(images, key, min_scale)
            logits, records = bn_statistics(teacher, variables, x)
            ce = soft_cross_entropy(logits, y)
            bn = bn_matching_loss(records)
            return ce + cfg.r_bn * bn, {"ce": ce, "bn": bn}

        self._loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        self._logits = jax.jit(lambda x: teacher.apply(variables, x, train=False))

    def min_scale(self, iteration: int, total: int) -> float:
        """The crop's smallest area fraction at ``iteration`` (CDA: 1 -> crop_min_scale)."""
        if not self.cfg.curriculum:
            return self.cfg.crop_min_scale
        progress = iteration / max(total - 1, 1)
        return 1.0 + progress * (self.cfg.crop_min_scale - 1.0)

    def loss_and_grad(self, syn: dict, iteration: int, total: int) -> tuple[Any, dict, dict]:
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), iteration)
        (loss, aux), g_images = self._loss_and_grad(syn["images"], key,
                                                    jnp.float32(self.min_scale(iteration, total)))
        return loss, image_grads(syn, g_images), {k: float(v) for k, v in aux.items()}

    def skip(self, loss: jax.Array) -> jax.Array:
        return jnp.zeros((), bool)

    def relabel(self, images: jax.Array) -> jax.Array:
        """The soft labels' logits: ``teacher(x) / T`` (softmax gives the label rows)."""
        return self._logits(images) / self.cfg.temperature

    def crop_labeller(self) -> Callable[[jax.Array], jax.Array] | None:
        """For the evaluation: ``x -> softmax(teacher(x) / T)`` on each augmented batch when
        ``relabel == "crop"``, else None (the stored per-image labels are used)."""
        if self.cfg.relabel != "crop":
            return None
        teacher, variables, t = self.teacher, self.variables, self.cfg.temperature
        return lambda x: jax.nn.softmax(teacher.apply(variables, x, train=False) / t, axis=-1)


# ------------------------------------------------------------------------------------ squeeze
def train_teacher(directory: str, model: nn.Module, x: jax.Array, y: np.ndarray,
                  x_test: jax.Array, y_test: np.ndarray, *, num_classes: int, epochs: int,
                  lr: float, batch_size: int, seed: int, description: dict,
                  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                  ) -> tuple[Any, float]:
    """The squeeze stage: ``(variables, test accuracy)`` of a BatchNorm teacher, trained with
    SGD (momentum 0.9, weight decay 5e-4, cosine schedule) or read back from ``directory``
    (``teacher.msgpack`` + ``teacher.json``) when it was trained there under ``description``.
    """
    meta_path = os.path.join(directory, "teacher.json")
    weights_path = os.path.join(directory, "teacher.msgpack")
    desc = json.loads(json.dumps({**description, "epochs": epochs, "lr": lr,
                                  "batch_size": batch_size, "seed": seed}))
    init = jax.jit(lambda k: model.init(k, x[:1], train=False))
    variables = init(jax.random.PRNGKey(seed))
    if os.path.exists(meta_path) and os.path.exists(weights_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("description") == desc:
            with open(weights_path, "rb") as f:
                variables = serialization.from_bytes(variables, f.read())
            return variables, float(meta["test_acc"])
    n = x.shape[0]
    batch = min(batch_size, n)
    steps_per_epoch = n // batch
    total = epochs * steps_per_epoch
    tx = optax.chain(optax.add_decayed_weights(5e-4),
                     optax.sgd(optax.cosine_decay_schedule(lr, total), momentum=0.9))
    onehot = jnp.eye(num_classes)[jnp.asarray(y)]

    @jax.jit
    def step(variables, opt, xb, yb, key):
        if augment is not None:
            xb = augment(xb, key)

        def loss_fn(params):
            logits, new = model.apply({**variables, "params": params}, xb, train=True,
                                      mutable=["batch_stats"])
            return soft_cross_entropy(logits, yb), new

        (_, new), g = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt = tx.update(g, opt, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {**variables, **new, "params": params}, opt

    opt = tx.init(variables["params"])
    key = jax.random.PRNGKey(seed + 1)
    for epoch in range(epochs):
        order = batch_indices(np.random.default_rng([seed, epoch]), n, batch, steps_per_epoch)
        for i, idx in enumerate(order):
            variables, opt = step(variables, opt, x[idx], onehot[idx],
                                  jax.random.fold_in(key, epoch * steps_per_epoch + i))
    logits = jax.jit(lambda v, xb: model.apply(v, xb, train=False))(variables, x_test)
    acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == np.asarray(y_test)))
    os.makedirs(directory, exist_ok=True)
    report.write_bytes_atomic(weights_path, serialization.to_bytes(variables))
    report.write_json_atomic(meta_path, {"description": desc, "test_acc": acc})
    return variables, acc
