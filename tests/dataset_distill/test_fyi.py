"""FYI's flip pairing: the paired set's layout, the gradient's way back, the driver option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.core import errors
from jaxkd.dataset_distill.fyi import FlipPaired, flip_pair, unflip_pair_grad

C, IPC = 3, 2
RNG = np.random.default_rng(0)
S = RNG.normal(size=(C * IPC, 4, 5, 2)).astype(np.float32)


def test_each_class_is_followed_by_its_mirror_images():
    paired = np.asarray(flip_pair(jnp.asarray(S), IPC, C))
    assert paired.shape == (C * 2 * IPC, 4, 5, 2)
    for c in range(C):
        own = S[c * IPC:(c + 1) * IPC]
        np.testing.assert_array_equal(paired[c * 2 * IPC:c * 2 * IPC + IPC], own)
        np.testing.assert_array_equal(paired[c * 2 * IPC + IPC:(c + 1) * 2 * IPC],
                                      own[:, :, ::-1, :])  # columns reversed


def test_the_gradient_goes_back_through_the_pairing():
    w = RNG.normal(size=(C * 2 * IPC, 4, 5, 2)).astype(np.float32)
    want = jax.grad(lambda s: jnp.sum(jnp.sin(flip_pair(s, IPC, C)) * w))(jnp.asarray(S))
    g_paired = np.cos(np.asarray(flip_pair(jnp.asarray(S), IPC, C))) * w
    np.testing.assert_allclose(unflip_pair_grad(jnp.asarray(g_paired), IPC, C), want,
                               rtol=1e-5, atol=1e-6)


class _Linear:
    """A stand-in method: loss = sum(sin(images) * W) + sum(labels * V) over the paired set."""

    name, learns_lr = "linear", False

    def __init__(self, w, v):
        self.w, self.v = w, v
        self.seen = None

    def loss_and_grad(self, syn, iteration, total):
        self.seen = syn
        x = syn["images"]
        loss = jnp.sum(jnp.sin(x) * self.w) + jnp.sum(syn["labels"] * self.v)
        grads = {"images": jnp.cos(x) * self.w, "labels": self.v, "lr": jnp.zeros(())}
        return loss, grads, {"it": iteration}

    def skip(self, loss):
        return loss > 1e9


def test_flip_paired_method_equals_autodiff_through_the_pairing():
    w = jnp.asarray(RNG.normal(size=(C * 2 * IPC, 4, 5, 2)), jnp.float32)
    v = jnp.asarray(RNG.normal(size=(C * 2 * IPC, C)), jnp.float32)
    labels = jnp.repeat(jnp.eye(C), IPC, axis=0)
    syn = {"images": jnp.asarray(S), "labels": labels, "lr": jnp.float32(0.01)}
    inner = _Linear(w, v)
    method = FlipPaired(inner, IPC, C)
    loss, grads, extra = method.loss_and_grad(syn, 7, 10)
    assert extra == {"it": 7} and method.name == "linear+fyi" and not method.skip(loss)
    # The inner method saw 2 * ipc images per class, the mirror images keeping their labels.
    assert inner.seen["images"].shape == (C * 2 * IPC, 4, 5, 2)
    np.testing.assert_array_equal(np.argmax(inner.seen["labels"], -1),
                                  np.repeat(np.arange(C), 2 * IPC))

    def total(images, lab):
        per_class = lab.reshape(C, IPC, C)
        paired = {"images": flip_pair(images, IPC, C),
                  "labels": jnp.concatenate([per_class, per_class], 1).reshape(-1, C)}
        return jnp.sum(jnp.sin(paired["images"]) * w) + jnp.sum(paired["labels"] * v)

    want_loss = total(syn["images"], labels)
    g_img, g_lab = jax.grad(total, argnums=(0, 1))(syn["images"], labels)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(grads["images"], g_img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["labels"], g_lab, rtol=1e-5, atol=1e-6)


def test_the_driver_distils_with_fyi_and_refuses_unflippable_settings(tmp_path):
    from configs.dataset_distill import dm_digits  # pylint: disable=g-import-not-at-top
    from jaxkd.dataset_distill import train as dd_train  # pylint: disable=g-import-not-at-top

    config = dm_digits.get_config("smoke")
    config.distill.progress = False
    config.eval.update(dict(cross_models="", baselines=False, num_nets=1, epochs=1.0))
    config.distill.fyi = True
    with pytest.raises(errors.ConfigError, match="has no 'flip'"):
        dd_train.check_config(config)
    config.dsa.strategy = "flip"  # (as on flippable data; digits themselves are not)
    dd_train.train_and_evaluate(config, str(tmp_path))
    syn = np.load(tmp_path / "synthetic.npz")
    assert syn["images"].shape == (10 * config.ipc, 8, 8, 1)  # the set itself, not the pairs
