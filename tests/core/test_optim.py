"""Optimizers, schedules and durations from config, against closed forms."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxkd.core import optim


def _cfg(**kw):
    base = dict(name="sgd", lr=0.1, schedule="cosine", warmup_steps=10, momentum=0.9,
                nesterov=False, weight_decay=0.0, grad_clip_norm=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_resolve_steps_from_steps_or_epochs():
    assert optim.resolve_steps(100, 0.0, 22, "config.train") == 100
    assert optim.resolve_steps(0, 2.5, 22, "config.train") == 55
    with pytest.raises(ValueError, match="exactly one of config.train.steps"):
        optim.resolve_steps(0, 0.0, 22, "config.train")
    with pytest.raises(ValueError, match="exactly one of config.teacher.steps"):
        optim.resolve_steps(5, 1.0, 22, "config.teacher")


def test_cosine_schedule_with_linear_warmup_matches_formula():
    sched = optim.make_schedule(_cfg(), 110)
    for step in (0, 5, 10, 60, 110):
        if step < 10:
            expected = 0.1 * step / 10
        else:
            expected = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert float(sched(step)) == pytest.approx(expected, abs=1e-7)
    assert float(optim.make_schedule(_cfg(schedule="constant", warmup_steps=0), 5)(3)) == \
        pytest.approx(0.1)
    assert float(optim.make_schedule(_cfg(schedule="linear", warmup_steps=0), 10)(5)) == \
        pytest.approx(0.05)


def test_sgd_with_coupled_weight_decay_matches_torch_semantics():
    # torch.optim.SGD: g <- g + wd * p; buf <- m * buf + g; p <- p - lr * buf.
    tx = optim.make_optimizer(_cfg(schedule="constant", warmup_steps=0, weight_decay=0.01), 10)
    p = jnp.array([1.0, -2.0])
    state = tx.init(p)
    p_np, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, 0.5], [-1.0, 2.0]):
        updates, state = tx.update(jnp.array(g), state, p)
        p = optax.apply_updates(p, updates)
        gg = np.array(g) + 0.01 * p_np
        buf = 0.9 * buf + gg
        p_np = p_np - 0.1 * buf
    np.testing.assert_allclose(p, p_np, rtol=1e-6)


def test_gradient_clipping_and_bad_names():
    tx = optim.make_optimizer(_cfg(schedule="constant", warmup_steps=0, momentum=0.0,
                                   grad_clip_norm=1.0), 10)
    p = jnp.zeros(2)
    updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(p), p)
    np.testing.assert_allclose(updates, [-0.06, -0.08], rtol=1e-6)  # clipped to norm 1, lr 0.1
    with pytest.raises(ValueError, match="config.optimizer.name='lamb'.*adamw"):
        optim.make_optimizer(_cfg(name="lamb"), 10)
    with pytest.raises(ValueError, match="config.optimizer.schedule='step'"):
        optim.make_schedule(_cfg(schedule="step"), 10)
