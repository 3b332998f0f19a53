"""Hypergradients through unrolled SGD: reverse host loop and scan+remat vs naive; TESLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.mtt import _outer, make_inner_step
from jaxkd.dataset_distill.nets import FlatModel
from jaxkd.dataset_distill.unroll import Unroller, num_steps
from jaxkd.models.convnet import ConvNet
from jaxkd.models.mlp import MLP


def _problem(model, shape, *, num_syn=10, steps=6, batch=5, soft=False, seed=0):
    fm = FlatModel.create(model, shape)
    k = jax.random.split(jax.random.key(seed), 5)
    labels = jax.nn.one_hot(jnp.arange(num_syn) % 4, 4)
    if soft:
        labels = jax.random.normal(k[4], (num_syn, 4))
    hyper = {"images": jax.random.normal(k[0], (num_syn, *shape)), "labels": labels,
             "lr": jnp.float32(0.05)}
    rng = np.random.default_rng(seed)
    aux = {"idx": np.stack([rng.permutation(num_syn)[:batch] for _ in range(steps)]),
           "key": jax.random.split(k[1], steps)}
    theta0 = fm.init(k[2])
    target = theta0 + 0.05 * jax.random.normal(k[3], theta0.shape)
    return fm, theta0, hyper, aux, {"start": theta0, "target": target}


def _rel_err(a, b):
    a, b = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_reverse_and_scan_equal_naive_autodiff_with_dsa():
    soft = True  # learnable label logits: the gradient reaches images, labels and lr
    fm, theta0, hyper, aux, ctx = _problem(ConvNet(num_classes=4, width=8, depth=2), (8, 8, 1),
                                           soft=soft, steps=3)
    step = make_inner_step(fm, DSAConfig(strategy="color_crop_cutout_flip_scale_rotate"),
                           soft=soft)
    results = {m: Unroller(step, _outer, method=m).value_and_grad(theta0, hyper, aux, ctx)
               for m in ("naive", "reverse", "scan")}
    loss_n, grad_n, theta_n = results["naive"]
    assert float(jnp.linalg.norm(grad_n["images"])) > 0
    for m in ("reverse", "scan"):
        loss, grad, theta = results[m]
        np.testing.assert_allclose(loss, loss_n, rtol=1e-6)
        np.testing.assert_allclose(theta, theta_n, rtol=1e-5, atol=1e-7)
        for name in ("images", "lr", "labels"):
            assert _rel_err(grad[name], grad_n[name]) < 1e-5, (m, name)


def test_reverse_matches_finite_differences():
    # The models and losses compute in float32, so central differences with a moderate step;
    # a missing cross-step term or a sign error is far outside the tolerance.
    fm, theta0, hyper, aux, ctx = _problem(MLP(num_classes=4, hidden=(6,)), (3,),
                                           num_syn=6, steps=4, batch=3)
    hyper["lr"] = jnp.float32(0.3)  # large steps: the cross-step terms matter
    step = make_inner_step(fm, DSAConfig(strategy="none"), soft=False)
    un = Unroller(step, _outer, method="reverse")
    _, grad, _ = un.value_and_grad(theta0, hyper, aux, ctx)
    rng = np.random.default_rng(1)
    for _ in range(4):  # directional derivatives along random directions
        d = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), hyper)
        norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(d)))
        d = jax.tree.map(lambda v: v / norm, d)  # unit direction: stay clear of ReLU kinks
        eps = 1e-3
        plus = jax.tree.map(lambda a, b: a + eps * b, hyper, d)
        minus = jax.tree.map(lambda a, b: a - eps * b, hyper, d)
        fd = (un.value_and_grad(theta0, plus, aux, ctx)[0]
              - un.value_and_grad(theta0, minus, aux, ctx)[0]) / (2 * eps)
        an = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
        np.testing.assert_allclose(an, fd, rtol=1e-2, atol=1e-4)


def test_reverse_memory_is_flat_in_steps_and_naive_grows():
    fm, theta0, hyper, _, ctx = _problem(ConvNet(num_classes=4, width=8, depth=2), (8, 8, 1))
    step = make_inner_step(fm, DSAConfig(strategy="none"), soft=False)

    def aux(n):
        return {"idx": np.zeros((n, 5), np.int32), "key": jax.random.split(jax.random.key(0), n)}

    ours = Unroller(step, _outer, method="reverse")
    naive = Unroller(step, _outer, method="naive")
    o2, o8 = (ours.memory_bytes(theta0, hyper, aux(n), ctx) for n in (2, 8))
    n2, n8 = (naive.memory_bytes(theta0, hyper, aux(n), ctx) for n in (2, 8))
    # Ours grows only by the stored parameter vectors; the naive graph by activations too.
    assert o8 - o2 == 6 * theta0.size * 4
    assert n8 - n2 > 2 * (o8 - o2)


def test_num_steps_checks_the_leading_axes():
    assert num_steps({"a": np.zeros((3, 2)), "b": np.zeros(3)}) == 3
    with pytest.raises(ValueError, match="leading axis"):
        num_steps({"a": np.zeros((3, 2)), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="valid: reverse, scan, naive, tesla"):
        Unroller(lambda t, h, a: t, _outer, method="adjoint")


def _tesla_reference(step, outer, theta0, hyper, aux, ctx):
    """Naive autodiff of the unrolled steps, each step's incoming theta cut from the graph."""

    def loss(h):
        theta = theta0
        for i in range(num_steps(aux)):
            t = jax.lax.stop_gradient(theta)
            theta = theta + (step(t, h, jax.tree.map(lambda a: a[i], aux)) - t)
        return outer(theta, ctx)

    return jax.jit(jax.grad(loss))(hyper)


def test_tesla_equals_autodiff_with_each_steps_theta_held_fixed():
    # A small MLP (the DSA path of the step is covered by the exact-gradient test above).
    soft = True
    fm, theta0, hyper, aux, ctx = _problem(MLP(num_classes=4, hidden=(6,)), (3,), num_syn=6,
                                           steps=4, batch=3, soft=soft)
    hyper["lr"] = jnp.float32(0.3)  # large steps: TESLA differs from the exact gradient
    step = make_inner_step(fm, DSAConfig(strategy="none"), soft=soft)
    loss, grad, theta_n = Unroller(step, _outer, method="tesla").value_and_grad(
        theta0, hyper, aux, ctx)
    loss_x, _, theta_x = Unroller(step, _outer, method="reverse").value_and_grad(
        theta0, hyper, aux, ctx)
    np.testing.assert_allclose(loss, loss_x, rtol=1e-6)  # same forward pass
    np.testing.assert_allclose(theta_n, theta_x, rtol=1e-6, atol=1e-7)
    ref = _tesla_reference(step, _outer, theta0, hyper, aux, ctx)
    for name in ("images", "lr", "labels"):
        assert _rel_err(grad[name], ref[name]) < 1e-5, name


def test_tesla_is_exact_for_one_step_and_biased_for_many():
    fm, theta0, hyper, aux, ctx = _problem(MLP(num_classes=4, hidden=(6,)), (3,),
                                           num_syn=6, steps=4, batch=3)
    hyper["lr"] = jnp.float32(0.3)
    step = make_inner_step(fm, DSAConfig(strategy="none"), soft=False)
    tesla, exact = (Unroller(step, _outer, method=m) for m in ("tesla", "reverse"))
    one = jax.tree.map(lambda a: a[:1], aux)
    assert _rel_err(tesla.value_and_grad(theta0, hyper, one, ctx)[1]["images"],
                    exact.value_and_grad(theta0, hyper, one, ctx)[1]["images"]) < 1e-6
    # Four large steps: the dropped cross-step terms change the gradient visibly.
    assert _rel_err(tesla.value_and_grad(theta0, hyper, aux, ctx)[1]["images"],
                    exact.value_and_grad(theta0, hyper, aux, ctx)[1]["images"]) > 1e-3
