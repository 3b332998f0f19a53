"""Gradient matching (DC / DSA): the loss against a per-class loop and finite differences, the
network's rounds (fresh at each outer iteration, trained on the synthetic set between updates)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.dc import DCConfig, GradientMatching
from jaxkd.dataset_distill.nets import FlatModel
from jaxkd.losses.dataset import gradient_matching_distance, soft_cross_entropy
from jaxkd.models.mlp import MLP
from jaxkd.models.registry import build

RNG = np.random.default_rng(0)
C, IPC = 3, 2
X = jnp.asarray(RNG.normal(size=(30, 4, 4, 1)), jnp.float32)
Y = np.arange(30) % C
MODEL = FlatModel.create(MLP(num_classes=C, hidden=(6,)), (4, 4, 1))
NO_AUG = DSAConfig(strategy="")


def _method(per_class_calls=None, **kw):
    cfg = DCConfig(**{"outer_loop": 3, "inner_loop": 2, "batch_real": 4, "lr_net": 0.1, **kw})
    return GradientMatching(MODEL, X, Y, C, IPC, cfg, NO_AUG, seed=0,
                            per_class_calls=per_class_calls)


def _naive_loss(images, theta, real):
    """The DC loss written as the paper's loop over classes, without vmap or reshapes."""
    total = 0.0
    for c in range(C):
        def ce(t, x):
            return soft_cross_entropy(MODEL.apply(t, x), jnp.eye(C)[jnp.full(x.shape[0], c)])
        g_real = jax.grad(ce)(theta, real[c])
        g_syn = jax.grad(ce)(theta, images[c * IPC:(c + 1) * IPC])
        total += gradient_matching_distance(MODEL.unravel(g_syn), MODEL.unravel(g_real))
    return total


def test_dc_loss_and_image_gradient_match_the_per_class_loop_and_finite_differences():
    m = _method()
    images = jnp.asarray(RNG.normal(size=(C * IPC, 4, 4, 1)), jnp.float32)
    theta = MODEL.init(jax.random.PRNGKey(1))
    real = jnp.stack([X[np.flatnonzero(Y == c)[:4]] for c in range(C)])
    keys = jax.random.split(jax.random.PRNGKey(2), C)
    want, want_grad = jax.value_and_grad(_naive_loss)(images, theta, real)
    # Both forms: vmapped over classes (the MLP's default) and one call per class (2-D convs').
    assert m.per_class is False
    loss, grad = m.matching_loss_and_grad(images, theta, real, keys)
    per_class = _method(per_class_calls=True)
    loss_pc, grad_pc = per_class.matching_loss_and_grad(images, theta, real, keys)
    for got, got_grad in ((loss, grad), (loss_pc, grad_pc)):
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    # With augmentation (DSA): each class keeps its own key in either form.
    aug = [GradientMatching(MODEL, X, Y, C, IPC, DCConfig(batch_real=4), DSAConfig(
        strategy="crop_scale"), seed=0, per_class_calls=f) for f in (False, True)]
    (a, ga), (b, gb) = (m_.matching_loss_and_grad(images, theta, real, keys) for m_ in aug)
    assert abs(float(a) - float(loss)) > 1e-3  # the augmentation changed the loss
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)
    conv = FlatModel.create(build("convnet", num_classes=C, width=4, depth=1, norm="instance"),
                            (4, 4, 1))
    assert GradientMatching(conv, X, Y, C, IPC, DCConfig(), NO_AUG, seed=0).per_class is True
    # The gradient is second order (through the synthetic gradient): check it by central
    # differences along a random direction, in float64 NumPy arithmetic of float32 losses.
    v = jnp.asarray(RNG.normal(size=images.shape), jnp.float32)
    eps = 1e-2
    fd = (float(_naive_loss(images + eps * v, theta, real))
          - float(_naive_loss(images - eps * v, theta, real))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, v)), fd, rtol=2e-2)
    assert float(jnp.linalg.norm(grad)) > 0 and np.all(np.isfinite(grad))


def test_rounds_fresh_network_then_sgd_on_the_synthetic_set():
    m = _method()
    images = jnp.asarray(RNG.normal(size=(C * IPC, 4, 4, 1)), jnp.float32)
    syn = {"images": images, "labels": jnp.zeros(C * IPC), "lr": jnp.float32(0.0)}
    carry = m.init_carry()
    _, _, _, carry0 = m.loss_and_grad(syn, 0, 10, carry)
    _, _, _, carry1 = m.loss_and_grad(syn, 1, 10, carry0)
    # Round 1: inner_loop = 2 full-batch (6 <= batch_train) SGD steps from round 0's network.
    targets = jnp.repeat(jnp.eye(C), IPC, axis=0)
    ce_grad = jax.grad(lambda t: soft_cross_entropy(MODEL.apply(t, images), targets))
    theta = carry0["theta"]
    for _ in range(2):
        theta = theta - 0.1 * ce_grad(theta)
    np.testing.assert_allclose(carry1["theta"], theta, rtol=1e-5, atol=1e-6)
    # Iteration outer_loop starts outer iteration 1 with another fresh network, whatever the
    # carry; the same iteration gives the same network (resume is exact).
    _, _, _, fresh = m.loss_and_grad(syn, 3, 10, carry1)
    _, _, _, again = m.loss_and_grad(syn, 3, 10, carry0)
    np.testing.assert_array_equal(fresh["theta"], again["theta"])
    assert not np.allclose(fresh["theta"], carry0["theta"])
    assert not np.allclose(fresh["theta"], carry1["theta"])
