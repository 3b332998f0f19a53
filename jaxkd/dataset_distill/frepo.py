"""Neural feature regression with a model pool (FRePo, Zhou, Nezhadarya & Ba 2022).

A kernel method: the synthetic set is scored by kernel ridge regression (KRR) on the features
``phi`` (the classifier's input) of a network ``theta`` drawn from a pool. For a real batch
``(X_t, Y_t)`` and the synthetic set ``(X_s, Y_s)`` (labels as one-hot rows):

    K_ss = phi(X_s) phi(X_s)^T,   K_ts = phi(X_t) phi(X_s)^T,
    loss = 1/2 mean_t |Y_t - K_ts (K_ss + lambda I)^{-1} Y_s|^2,
    lambda = ridge * trace(K_ss) / |S|.

Only the images receive the gradient (``theta`` is held fixed), so one iteration costs one
forward/backward through the features and a ``|S| x |S|`` solve, with no unrolled training.

The pool holds ``pool_size`` networks, each trained online on the synthetic set: at every
iteration one network (drawn from the iteration number) scores the set, then takes one SGD step
(cross-entropy on the synthetic set, ``lr_net``, momentum 0.9); a network that has taken
``max_online_steps`` steps is replaced by a fresh one. The pool is the method's *carry*, kept
in the driver's checkpointed state, so an interrupted run resumes exactly.

Differences from the paper's code, stated: the pool networks train with SGD (the paper: Adam),
labels are fixed one-hot rows (the paper can learn them), and there is no augmentation while
distilling (as in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.nets import FlatModel, image_grads
from jaxkd.losses.dataset import soft_cross_entropy

__all__ = ["FRePoConfig", "FeatureRegression", "krr_loss"]


@dataclasses.dataclass(frozen=True)
class FRePoConfig:
    """FRePo settings (names as in the paper's code where it has them)."""

    pool_size: int = 10  # networks in the pool
    max_online_steps: int = 100  # a network is replaced after this many training steps
    batch_real: int = 1024  # real examples per iteration (all classes; capped by the set)
    ridge: float = 1e-6  # lambda = ridge * trace(K_ss) / |S|
    lr_net: float = 0.01  # pool networks' SGD learning rate (momentum 0.9)


def krr_loss(feat_syn: jax.Array, y_syn: jax.Array, feat_real: jax.Array, y_real: jax.Array,
             ridge: float) -> jax.Array:
    """FRePo's meta-loss: the KRR prediction of ``y_real`` from the synthetic set, MSE / 2.

    Args:
      feat_syn: ``[S, D]`` features of the synthetic set; ``y_syn``: ``[S, C]`` its targets.
      feat_real: ``[T, D]`` features of a real batch; ``y_real``: ``[T, C]`` its targets.
      ridge: relative regulariser, ``lambda = ridge * trace(K_ss) / S``.

    Returns:
      scalar float32: ``1/2 mean_t sum_c (y_real - pred)^2``.
    """
    f32 = lambda a: a.astype(jnp.float32)
    fs, fr, ys = f32(feat_syn), f32(feat_real), f32(y_syn)
    n, d = fs.shape
    lam = ridge * jnp.sum(jnp.square(fs)) / n  # trace(K_ss) = |F_s|^2
    if n <= d:  # the n x n kernel system
        alpha = jax.scipy.linalg.solve(fs @ fs.T + lam * jnp.eye(n), ys, assume_a="pos")
        pred = (fr @ fs.T) @ alpha
    else:
        # More synthetic examples than features: K_ss has rank <= d, and with a small ridge its
        # Cholesky factorisation fails in float32. The same prediction from the d x d system
        # (F_s (F_s^T F_s + lam I)^-1 = (F_s F_s^T + lam I)^-1 F_s, the push-through identity).
        w = jax.scipy.linalg.solve(fs.T @ fs + lam * jnp.eye(d), fs.T @ ys, assume_a="pos")
        pred = fr @ w
    return 0.5 * jnp.mean(jnp.sum(jnp.square(f32(y_real) - pred), axis=-1))


class FeatureRegression:
    """FRePo as a distillation method for :mod:`jaxkd.dataset_distill.train`."""

    name = "frepo"
    learns_lr = False

    def __init__(self, model: FlatModel, x_real: jax.Array, y_real: np.ndarray,
                 num_classes: int, ipc: int, cfg: FRePoConfig, *, seed: int):
        if cfg.pool_size < 1 or cfg.max_online_steps < 1:
            raise ValueError(f"pool_size={cfg.pool_size} and max_online_steps="
                             f"{cfg.max_online_steps} must be >= 1")
        self.model, self.x_real, self.cfg, self.seed = model, x_real, cfg, seed
        self.num_real = int(x_real.shape[0])
        self.batch_real = min(cfg.batch_real, self.num_real)
        eye = jnp.eye(num_classes)
        self._y_real = eye[jnp.asarray(y_real)]
        self._y_syn = jnp.repeat(eye, ipc, axis=0)

        def loss_fn(images, theta, x_t, y_t):
            return krr_loss(model.embed(theta, images), self._y_syn, model.embed(theta, x_t),
                            y_t, cfg.ridge)

        self._loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))

        def online_step(thetas, vels, steps, k, images, fresh):
            # One SGD step of pool network k on the synthetic set; replaced when it is spent.
            theta, vel = thetas[k], vels[k]
            g = jax.grad(lambda t: soft_cross_entropy(model.apply(t, images), self._y_syn))(theta)
            vel = 0.9 * vel + g
            theta = theta - cfg.lr_net * vel
            spent = steps[k] + 1 >= cfg.max_online_steps
            theta = jnp.where(spent, fresh, theta)
            vel = jnp.where(spent, jnp.zeros_like(vel), vel)
            return (thetas.at[k].set(theta), vels.at[k].set(vel),
                    steps.at[k].set(jnp.where(spent, 0, steps[k] + 1)))

        self._online_step = jax.jit(online_step)
        self._init = jax.jit(model.init)

    def _key(self, iteration: int) -> jax.Array:
        return jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), iteration)

    def init_carry(self) -> dict:
        """The pool: ``thetas [K, P]``, momentum ``vels [K, P]``, online ``steps [K]``.

        Network ``k`` starts ``k * max_online_steps / K`` steps into its life (untrained, but
        replaced sooner) so that the pool's networks are not all replaced at once, as FRePo
        staggers them.
        """
        k = self.cfg.pool_size
        thetas = jax.vmap(self.model.init)(jax.random.split(jax.random.PRNGKey(self.seed + 2), k))
        steps = (np.arange(k) * self.cfg.max_online_steps // k).astype(np.int32)
        return {"thetas": thetas, "vels": jnp.zeros_like(thetas), "steps": jnp.asarray(steps)}

    def loss_and_grad(self, syn: dict, iteration: int, total: int,
                      carry: dict) -> tuple[Any, dict, dict, dict]:
        del total
        rng = np.random.default_rng([self.seed, 13, iteration])
        k = int(rng.integers(self.cfg.pool_size))
        idx = np.sort(rng.choice(self.num_real, self.batch_real, replace=False))
        loss, g_images = self._loss_and_grad(syn["images"], carry["thetas"][k],
                                             self.x_real[idx], self._y_real[idx])
        fresh = self._init(self._key(iteration))
        thetas, vels, steps = self._online_step(carry["thetas"], carry["vels"], carry["steps"],
                                                k, syn["images"], fresh)
        carry = {"thetas": thetas, "vels": vels, "steps": steps}
        return loss, image_grads(syn, g_images), {}, carry

    def skip(self, loss: jax.Array) -> jax.Array:
        return jnp.zeros((), bool)
