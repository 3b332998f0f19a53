"""FYI (flip your images, Son et al. 2024) as a plug-in for every distillation method here.

Methods that match real data under horizontal flips (DSA's flip, or flipped real batches) push
each synthetic image towards features that look the same either way round ("bilateral
equivalence"): the left and right halves learn mirrored copies of one pattern, wasting half of
the image. FYI optimises the set together with its mirror image: the method sees

    S' = [S_c, flip(S_c)] for each class c   (2 * ipc images per class),

and the gradient it returns for ``S'`` is carried back to ``S`` by the chain rule,
``dL/dS = dL/dS'[:ipc] + flip(dL/dS'[ipc:])``. Since ``flip(S)`` already covers the mirrored
pattern, each image is free to hold an asymmetric one. The saved and evaluated set is ``S``
(``ipc`` images per class; evaluation flips it as usual through augmentation).

Wrap a method built for ``2 * ipc`` images per class with :class:`FlipPaired`. Only meaningful
on data whose label survives a horizontal flip (natural images such as CIFAR); digits and
MNIST-1D signals are not flipped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["FlipPaired", "flip_pair", "unflip_pair_grad"]


def _flip(images: jax.Array) -> jax.Array:
    """Horizontal flip of ``[N, H, W, C]`` images (the width axis)."""
    return images[:, :, ::-1, :]


def flip_pair(images: jax.Array, ipc: int, num_classes: int) -> jax.Array:
    """``[C * ipc, H, W, ch]`` class by class -> ``[C * 2 ipc, ...]``: each class's images, then
    their mirror images."""
    s = images.reshape(num_classes, ipc, *images.shape[1:])
    flipped = s[:, :, :, ::-1, :]
    return jnp.concatenate([s, flipped], axis=1).reshape(num_classes * 2 * ipc,
                                                         *images.shape[1:])


def unflip_pair_grad(grad: jax.Array, ipc: int, num_classes: int) -> jax.Array:
    """The gradient for ``S`` from one for ``flip_pair(S)`` (the transpose of the pairing)."""
    g = grad.reshape(num_classes, 2 * ipc, *grad.shape[1:])
    return (g[:, :ipc] + g[:, ipc:, :, ::-1, :]).reshape(num_classes * ipc, *grad.shape[1:])


def _pair_rows(rows: jax.Array, ipc: int, num_classes: int) -> jax.Array:
    """Labels ``[C * ipc, ...]`` -> ``[C * 2 ipc, ...]``: a mirror image keeps its label."""
    r = rows.reshape(num_classes, ipc, *rows.shape[1:])
    return jnp.concatenate([r, r], axis=1).reshape(num_classes * 2 * ipc, *rows.shape[1:])


def _unpair_rows(grad: jax.Array, ipc: int, num_classes: int) -> jax.Array:
    g = grad.reshape(num_classes, 2 * ipc, *grad.shape[1:])
    return (g[:, :ipc] + g[:, ipc:]).reshape(num_classes * ipc, *grad.shape[1:])


class FlipPaired:
    """A distillation method (built for ``2 * ipc`` images per class) run on ``S`` and ``flip(S)``.

    Exposes the wrapped method's interface (``loss_and_grad`` with or without a carry,
    ``skip``, ``name``, ``learns_lr``, ``init_carry``, ``relabel``...).
    """

    def __init__(self, method: Any, ipc: int, num_classes: int):
        self.method, self.ipc, self.num_classes = method, ipc, num_classes
        self.name = f"{method.name}+fyi"
        self.learns_lr = method.learns_lr
        if hasattr(method, "init_carry"):
            self.init_carry = method.init_carry

    def __getattr__(self, name: str) -> Any:  # relabel, crop_labeller, min_scale, ...
        return getattr(self.method, name)

    def _pair(self, syn: dict) -> dict:
        return {**syn, "images": flip_pair(syn["images"], self.ipc, self.num_classes),
                "labels": _pair_rows(syn["labels"], self.ipc, self.num_classes)}

    def _unpair(self, grads: dict) -> dict:
        return {**grads,
                "images": unflip_pair_grad(grads["images"], self.ipc, self.num_classes),
                "labels": _unpair_rows(grads["labels"], self.ipc, self.num_classes)}

    def loss_and_grad(self, syn: dict, iteration: int, total: int, *carry: Any):
        out = self.method.loss_and_grad(self._pair(syn), iteration, total, *carry)
        return (out[0], self._unpair(out[1]), *out[2:])

    def skip(self, loss: jax.Array) -> jax.Array:
        return self.method.skip(loss)
