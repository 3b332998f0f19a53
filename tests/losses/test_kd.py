"""Hinton KD loss against an independent NumPy computation (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses
from jaxkd.losses import kd


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _np_kd(s, t, temperature, mask):
    """T^2 * masked mean over examples of sum_c p_c (log p_c - log q_c), in float64."""
    p = _np_softmax(t / temperature)
    q = _np_softmax(s / temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    return temperature**2 * (kl * mask).sum() / max(mask.sum(), 1.0)


def _np_kd_grad(s, t, temperature, mask):
    """Closed-form gradient: d/ds [T^2 KL(p||q)] = T (q - p), weighted by mask / sum(mask)."""
    p = _np_softmax(t / temperature)
    q = _np_softmax(s / temperature)
    w = mask / max(mask.sum(), 1.0)
    return temperature * (q - p) * w[:, None]


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_hinton_kd_value_and_grad_match_numpy(temperature):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 10)) * 3
    t = rng.normal(size=(6, 10)) * 3
    mask = np.array([1, 1, 0, 1, 1, 0], np.float64)
    value, grad = jax.value_and_grad(
        lambda x: kd.hinton_kd_loss(x, jnp.asarray(t, jnp.float32), temperature=temperature,
                                    mask=jnp.asarray(mask)))(jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(value, _np_kd(s, t, temperature, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, _np_kd_grad(s, t, temperature, mask), rtol=1e-4, atol=1e-6)


def test_hinton_kd_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 5))
    t = rng.normal(size=(3, 5))
    mask = np.ones(3)
    eps = 1e-6
    fd = np.zeros_like(s)
    for i in np.ndindex(s.shape):
        d = np.zeros_like(s)
        d[i] = eps
        fd[i] = (_np_kd(s + d, t, 2.0, mask) - _np_kd(s - d, t, 2.0, mask)) / (2 * eps)
    g = jax.grad(lambda x: kd.hinton_kd_loss(x, jnp.asarray(t, jnp.float32), temperature=2.0))(
        jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-5)


def test_no_gradient_flows_into_teacher():
    s = jnp.ones((2, 3))
    t = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    g = jax.grad(lambda tt: kd.hinton_kd_loss(s, tt))(t)
    np.testing.assert_array_equal(g, np.zeros((2, 3)))


def test_objective_combines_ce_and_kd_with_alpha():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(4, 7)).astype(np.float32)
    t = rng.normal(size=(4, 7)).astype(np.float32)
    y = np.array([0, 3, 6, 2])
    loss, aux = losses.hinton_kd_objective(s, t, y, temperature=4.0, alpha=0.9)
    ce = -np.log(_np_softmax(s.astype(np.float64))[np.arange(4), y]).mean()
    kd_val = _np_kd(s.astype(np.float64), t.astype(np.float64), 4.0, np.ones(4))
    np.testing.assert_allclose(aux["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["kd"], kd_val, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.1 * ce + 0.9 * kd_val, rtol=1e-5)


def test_all_zero_mask_gives_zero_not_nan():
    s = jnp.zeros((3, 4))
    t = jnp.ones((3, 4))
    y = jnp.zeros((3,), jnp.int32)
    loss, _ = losses.hinton_kd_objective(s, t, y, mask=jnp.zeros(3))
    assert float(loss) == 0.0
    g = jax.grad(lambda x: losses.hinton_kd_objective(x, t, y, mask=jnp.zeros(3))[0])(s)
    assert np.all(np.isfinite(g))


def test_bfloat16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 10)).astype(np.float32)
    t = rng.normal(size=(4, 10)).astype(np.float32)
    v16 = kd.hinton_kd_loss(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert v16.dtype == jnp.float32
    s16 = np.asarray(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32), np.float64)
    t16 = np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(v16, _np_kd(s16, t16, 4.0, np.ones(4)), rtol=1e-4)


def test_teacher_zero_probability_is_finite():
    s = jnp.zeros((1, 3))
    t = jnp.array([[0.0, -jnp.inf, 1.0]])
    assert np.isfinite(float(kd.hinton_kd_loss(s, t, temperature=1.0)))


def test_bad_hyperparameters_and_unknown_loss_name():
    with pytest.raises(ValueError, match="temperature"):
        kd.hinton_kd_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        losses.hinton_kd_objective(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32),
                                   alpha=1.5)
    with pytest.raises(ValueError, match="valid losses: hinton"):
        losses.get_loss("hintonn")
