"""Every registered logit loss runs through the registry signature, jitted, and is finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_registered_loss_runs_with_the_registry_signature(name):
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 6), jnp.int32)
    mask = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    fn = jax.jit(lambda s_, t_: losses.get_loss(name)(s_, t_, labels=y, temperature=2.0,
                                                      mask=mask))
    value, grad = jax.value_and_grad(fn)(s, t)
    assert value.shape == () and np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    np.testing.assert_array_equal(grad[4:], 0)  # masked examples get no gradient


def test_hinton_through_the_registry_ignores_labels():
    s, t = jnp.ones((2, 3)), jnp.eye(3)[:2]
    a = losses.get_loss("hinton")(s, t, labels=jnp.array([0, 1]), temperature=2.0)
    np.testing.assert_allclose(a, losses.hinton_kd_loss(s, t, temperature=2.0))
