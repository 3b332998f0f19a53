"""Networks as flat parameter vectors, and training several of them at once.

Dataset distillation trains many small networks: experts on the real data (whose parameter
trajectories MTT matches) and fresh networks on a synthetic set (the evaluation protocol).
Both are "K networks of one architecture, plain SGD, differentiable siamese augmentation",
done here by one step over ``K`` flat parameter vectors: ``jax.vmap`` over the networks, or, for
a model with 2-D convolutions, one compiled single-network step applied to each network in turn
(vmapping a convolution over its weights makes one grouped convolution, which XLA:CPU runs
2.1-3.2x slower than the ``K`` plain ones for the digits ConvNet and ResNet-8, while for the
1-D ConvNet and the MLP the two forms are about even, 0.85-1.12x; ``benchmarks/vmap_vs_loop.py``,
two runs).

Flat parameters (``jax.flatten_util.ravel_pytree``) make trajectories one array per epoch, the
MTT distance a vector norm, and SGD two lines. A model used here must have only ``params``
(no batch statistics): the DD ConvNet with instance/layer/no norm, the MLP, the 1-D ConvNet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core
from jax.flatten_util import ravel_pytree

from jaxkd.dataset_distill.augment import DSAConfig, dsa
from jaxkd.losses.dataset import soft_cross_entropy

__all__ = ["ExpertObjective", "FlatModel", "SGDConfig", "NetTrainer", "batch_indices",
           "class_batches", "expert_gradient", "has_2d_convolution", "image_grads",
           "lr_at"]


@dataclasses.dataclass(frozen=True)
class FlatModel:
    """A Flax module addressed through a flat parameter vector ``theta [P]``."""

    module: nn.Module
    input_shape: tuple[int, ...]  # one example, e.g. (8, 8, 1)
    unravel: Callable[[jax.Array], Any]
    num_params: int

    @classmethod
    def create(cls, module: nn.Module, input_shape: tuple[int, ...]) -> FlatModel:
        """Builds the flat view; raises if the module has variables other than ``params``."""
        shapes = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, *input_shape)),
                                                      train=False), jax.random.key(0))
        extra = sorted(set(shapes) - {"params"})
        if extra:
            raise ValueError(
                f"{type(module).__name__} has variable collections {extra} besides 'params'; "
                "dataset distillation trains networks as flat parameter vectors and needs a "
                "model without batch statistics (for the ConvNet use model.norm='instance')")
        flat, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                  shapes["params"]))
        return cls(module, tuple(input_shape), unravel, int(flat.size))

    def init(self, key: jax.Array) -> jax.Array:
        """A fresh random ``theta [P]`` (the module's own initialisers)."""
        params = self.module.init(key, jnp.zeros((1, *self.input_shape)), train=False)["params"]
        return ravel_pytree(params)[0]

    def apply(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """Logits ``[B, C]`` for inputs ``x [B, *input_shape]``."""
        return self.module.apply({"params": self.unravel(theta)}, x, train=True)

    def embed(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """The classifier's input ``[B, D]`` (the ``features`` the model sows)."""
        _, state = self.module.apply({"params": self.unravel(theta)}, x, train=True,
                                     mutable=["intermediates"])
        return state["intermediates"]["features"][0]


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """PyTorch-style SGD: ``v = momentum * v + g + weight_decay * theta; theta -= lr * v``.

    The learning rate is multiplied by ``decay_factor`` once a fraction ``decay_at`` of the
    steps is done (the evaluation protocol: 0.1 at half of training); ``decay_at=1`` keeps it
    constant.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay_at: float = 0.5
    decay_factor: float = 0.1


@dataclasses.dataclass(frozen=True)
class ExpertObjective:
    """How experts are trained beyond plain SGD on cross-entropy (the default changes nothing).

    - FTD (flat trajectories): sharpness-aware minimisation. The gradient is taken at
      ``theta + e`` with ``e = sam_rho * g / ||g||`` (``g`` the plain gradient; with
      ``sam_adaptive`` (ASAM) ``e = sam_rho * theta^2 g / ||theta g||``). With ``sam_alpha > 0``
      (GSAM, FTD's choice with rho 0.01, alpha 0.3) the part of ``g`` orthogonal to the perturbed
      gradient ``g_p`` is subtracted: ``g_p - sam_alpha * (g - (g.g_p / |g_p|^2) g_p)``.
    - AST (smooth expert trajectories): ``loss_scale`` multiplies the loss in the first
      ``len(loss_scale)`` epochs (its "clipping loss": a gentler start; AST uses
      0.5, 0.5, 0.55, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9), and ``grad_penalty`` adds
      ``grad_penalty * mean_i (||d loss_i / d x_i|| - 1)^2``, the input-gradient norm of each
      example's loss pulled towards 1 (the card's 2 * mean((||grad_x f|| - 1)^2), with f read
      as the example's loss; computed on the augmented batch by double backpropagation).
    """

    sam_rho: float = 0.0
    sam_alpha: float = 0.0
    sam_adaptive: bool = False
    loss_scale: tuple[float, ...] = ()
    grad_penalty: float = 0.0

    def scale_at(self, epoch: int) -> float:
        """The loss multiplier of (0-based) epoch ``epoch``."""
        return self.loss_scale[epoch] if epoch < len(self.loss_scale) else 1.0

    @property
    def is_plain(self) -> bool:
        return self == ExpertObjective()


def expert_gradient(model: FlatModel, objective: ExpertObjective, theta: jax.Array,
                    x: jax.Array, y: jax.Array, scale: jax.Array | float = 1.0,
                    ) -> tuple[jax.Array, jax.Array]:
    """``(loss, gradient)`` of one expert step on the (augmented) batch ``x``, targets ``y``.

    ``loss`` is the scaled objective at ``theta`` (cross-entropy times ``scale`` plus the
    gradient penalty); the gradient follows :class:`ExpertObjective` (SAM/GSAM when
    ``sam_rho > 0``).
    """

    def loss_fn(t):
        per_example = lambda xb: -jnp.sum(
            y * jax.nn.log_softmax(model.apply(t, xb).astype(jnp.float32), -1), -1)
        loss = scale * jnp.mean(per_example(x))
        if objective.grad_penalty:
            # The examples are independent (no batch statistics), so the gradient of the sum
            # holds each example's own input gradient.
            gx = jax.grad(lambda xb: jnp.sum(per_example(xb)))(x)
            norms = jnp.sqrt(jnp.sum(jnp.square(gx.reshape(x.shape[0], -1)), -1) + 1e-12)
            loss = loss + objective.grad_penalty * jnp.mean(jnp.square(norms - 1.0))
        return loss

    loss, g = jax.value_and_grad(loss_fn)(theta)
    if not objective.sam_rho:
        return loss, g
    weight = jnp.abs(theta) if objective.sam_adaptive else 1.0
    e = objective.sam_rho * weight * weight * g / (jnp.linalg.norm(weight * g) + 1e-12)
    g_p = jax.grad(loss_fn)(theta + e)
    if objective.sam_alpha:
        parallel = jnp.vdot(g, g_p) / (jnp.vdot(g_p, g_p) + 1e-12) * g_p
        g_p = g_p - objective.sam_alpha * (g - parallel)
    return loss, g_p


def has_2d_convolution(model: FlatModel) -> bool:
    """Whether ``model``'s forward pass holds a convolution over two or more spatial axes."""
    jaxpr = jax.make_jaxpr(model.apply)(jnp.zeros(model.num_params),
                                        jnp.zeros((1, *model.input_shape)))

    def walk(jp) -> bool:
        for eqn in jp.eqns:
            if (eqn.primitive.name == "conv_general_dilated"
                    and len(eqn.params["dimension_numbers"].lhs_spec) > 3):
                return True
            if any(walk(sub.jaxpr if hasattr(sub, "jaxpr") else sub)
                   for sub in jax_core.jaxprs_in_params(eqn.params)):
                return True
        return False

    return walk(jaxpr.jaxpr)


def lr_at(cfg: SGDConfig, step: int, total_steps: int, lr: float | None = None) -> float:
    """The learning rate of step ``step`` of ``total_steps`` (``lr`` overrides ``cfg.lr``)."""
    base = cfg.lr if lr is None else lr
    return base * (cfg.decay_factor if step >= cfg.decay_at * total_steps else 1.0)


def batch_indices(rng: np.random.Generator, num_examples: int, batch_size: int,
                  num_steps: int) -> np.ndarray:
    """``[num_steps, batch_size]`` indices: consecutive chunks of concatenated permutations.

    Every example is seen once per ``num_examples / batch_size`` steps (an epoch), batches have
    a fixed size (one compiled step), and an epoch's tail continues into the next permutation.
    """
    need = num_steps * batch_size
    perms = [rng.permutation(num_examples) for _ in range(-(-need // num_examples))]
    return np.concatenate(perms)[:need].reshape(num_steps, batch_size).astype(np.int32)


def class_batches(members: list[np.ndarray], size: int, seed: int, iteration: int) -> np.ndarray:
    """``[C, size]`` indices: ``size`` real examples of each class, drawn without replacement
    from ``members[c]``, fixed by ``(seed, iteration)`` (so a resumed run draws the same)."""
    rng = np.random.default_rng([seed, 11, iteration])
    return np.stack([rng.choice(m, size, replace=False) for m in members])


def image_grads(syn: dict, g_images: jax.Array) -> dict:
    """A gradient tree for the synthetic set where only the images learn (zeros elsewhere)."""
    grads = jax.tree.map(jnp.zeros_like, syn)
    grads["images"] = g_images
    return grads


class NetTrainer:
    """``K`` networks trained in lockstep on one data set with SGD and DSA.

    Each network has its own minibatch order and augmentation key; everything else is shared.
    Targets are class-probability rows ``[N, C]`` (one-hot for hard labels). With ``relabel``
    (SRe2L's per-crop relabelling, FKD-style) the targets of each step are instead
    ``relabel(x)`` on the augmented batch ``x`` (a teacher's soft labels of exactly what the
    network sees).

    ``vmap``: one vectorised step over the ``K`` networks (True) or one single-network step per
    network (False); the same mathematics. Default: vmap unless the model has a 2-D
    convolution (see the module docstring).
    """

    def __init__(self, model: FlatModel, sgd: SGDConfig, dsa_cfg: DSAConfig,
                 objective: ExpertObjective = ExpertObjective(),
                 relabel: Callable[[jax.Array], jax.Array] | None = None,
                 vmap: bool | None = None):
        self.model, self.sgd, self.dsa_cfg, self.objective = model, sgd, dsa_cfg, objective
        self.vmap = not has_2d_convolution(model) if vmap is None else vmap

        def one(theta, vel, x_all, y_all, idx, key, lr, scale):
            x, y = dsa(x_all[idx], key, dsa_cfg), y_all[idx]
            if relabel is not None:
                y = jax.lax.stop_gradient(relabel(x)).astype(jnp.float32)
            if objective.is_plain:
                loss, g = jax.value_and_grad(
                    lambda t: soft_cross_entropy(model.apply(t, x), y))(theta)
            else:
                loss, g = expert_gradient(model, objective, theta, x, y, scale)
            vel = sgd.momentum * vel + g + sgd.weight_decay * theta
            return theta - lr * vel, vel, loss

        self._one = jax.jit(one, donate_argnums=(0, 1))
        self._vmapped = {per_net: jax.jit(jax.vmap(one, in_axes=(0, 0, *(ax,) * 2, 0, 0, None,
                                                                  None)), donate_argnums=(0, 1))
                         for per_net, ax in ((False, None), (True, 0))}

        def correct(theta, x, labels):
            return jnp.sum(jnp.argmax(model.apply(theta, x), -1) == labels)

        self._correct = jax.jit(correct)
        self._correct_vmapped = jax.jit(jax.vmap(correct, in_axes=(0, None, None)))

    def init(self, key: jax.Array, num_nets: int) -> tuple[jax.Array, jax.Array]:
        """``(thetas [K, P], velocities [K, P])`` for ``K = num_nets`` fresh networks."""
        thetas = jax.vmap(self.model.init)(jax.random.split(key, num_nets))
        return thetas, jnp.zeros_like(thetas)

    def steps_for(self, num_examples: int, epochs: float) -> tuple[int, int]:
        """``(batch size, number of steps)`` for ``epochs`` passes over ``num_examples``."""
        batch = min(self.sgd.batch_size, num_examples)
        return batch, max(1, int(round(epochs * num_examples / batch)))

    def train(self, thetas: jax.Array, vels: jax.Array, x: jax.Array, targets: jax.Array, *,
              seed: int, first_step: int, num_steps: int, total_steps: int,
              lr: float | None = None, on_step: Callable[[int, jax.Array], None] | None = None,
              per_net: bool = False, vmap: bool | None = None) -> tuple[jax.Array, jax.Array]:
        """Runs steps ``first_step .. first_step + num_steps - 1`` of a ``total_steps`` run.

        Minibatches and augmentation keys depend only on ``(seed, net, step)``, so a run split
        into several calls (an interrupted expert run) is identical to one call.
        ``on_step(step, losses [K])`` is called after each step (progress bars). With
        ``per_net``, ``x [K, M, ...]`` and ``targets [K, M, C]`` hold one data set per network.
        ``vmap`` overrides the trainer's choice (see the class docstring).
        """
        vmap = self.vmap if vmap is None else vmap
        num_nets = thetas.shape[0]
        num = x.shape[1] if per_net else x.shape[0]
        batch = min(self.sgd.batch_size, num)
        steps_per_epoch = -(-num // batch)
        if vmap:
            step_fn = self._vmapped[per_net]
        else:
            thetas, vels = list(thetas), list(vels)  # [P] each: one step per network
            xs, ts = (list(x), list(targets)) if per_net else ([x] * num_nets,
                                                              [targets] * num_nets)

            def step_fn(thetas, vels, x, targets, idx, keys, lr, scale):
                out = [self._one(thetas[k], vels[k], xs[k], ts[k], idx[k], keys[k], lr, scale)
                       for k in range(num_nets)]
                return [o[0] for o in out], [o[1] for o in out], jnp.stack([o[2] for o in out])
        base = jax.random.key(seed)
        order, order_epoch = None, None
        for step in range(first_step, first_step + num_steps):
            epoch, within = divmod(step, steps_per_epoch)
            if epoch != order_epoch:  # [K, steps_per_epoch, batch]: this epoch's minibatches
                order = np.stack([batch_indices(np.random.default_rng([seed, k, epoch]), num,
                                                batch, steps_per_epoch)
                                  for k in range(num_nets)])
                order_epoch = epoch
            idx = order[:, within]
            keys = jax.random.split(jax.random.fold_in(base, step), num_nets)
            thetas, vels, losses = step_fn(thetas, vels, x, targets, idx, keys,
                                           lr_at(self.sgd, step, total_steps, lr),
                                           self.objective.scale_at(epoch))
            if on_step is not None:
                on_step(step, losses)
        return (thetas, vels) if vmap else (jnp.stack(thetas), jnp.stack(vels))

    def accuracy(self, thetas: jax.Array, x: jax.Array, labels: jax.Array,
                 batch_size: int = 1000) -> np.ndarray:
        """Test accuracy of each network, ``[K]`` float64 fractions."""
        correct = np.zeros(thetas.shape[0])
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size], labels[s:s + batch_size]
            if self.vmap:
                correct += np.asarray(self._correct_vmapped(thetas, xb, yb), np.float64)
            else:
                correct += [float(self._correct(theta, xb, yb)) for theta in thetas]
        return correct / x.shape[0]
