"""Smoother experts: FTD's sharpness-aware training (SAM, ASAM, GSAM) and AST's loss scale and
input-gradient penalty, against NumPy on softmax regression (closed-form gradients)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.core import errors
from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.experts import ExpertsMismatchError, train_experts
from jaxkd.dataset_distill.nets import (ExpertObjective, FlatModel, NetTrainer, SGDConfig,
                                        expert_gradient)
from jaxkd.models.mlp import MLP

C, D, B = 3, 6, 5
MODEL = FlatModel.create(MLP(num_classes=C, hidden=()), (2, 3, 1))  # softmax regression
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, 2, 3, 1)).astype(np.float32)
Y = np.eye(C, dtype=np.float32)[RNG.integers(0, C, B)]
THETA = 0.5 * RNG.normal(size=MODEL.num_params).astype(np.float32)


# Where each kernel/bias entry sits in the flat vector (so NumPy reads theta in float64).
_INDEX = jax.tree.map(lambda a: np.asarray(a).astype(np.int64),
                      MODEL.unravel(jnp.arange(MODEL.num_params, dtype=jnp.float32)))["head"]


def _wb(theta):
    return theta[_INDEX["kernel"]], theta[_INDEX["bias"]]


def _flat(gw, gb):
    """NumPy gradients of (kernel, bias) in the model's flat order."""
    tree = {"head": {"kernel": jnp.asarray(gw, jnp.float32), "bias": jnp.asarray(gb, jnp.float32)}}
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0], np.float64)


def _np_loss_grad(theta, scale=1.0):
    """Scaled mean cross-entropy of softmax regression and its closed-form gradient."""
    w, b = _wb(theta)
    x = X.reshape(B, D).astype(np.float64)
    z = x @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    loss = -np.mean(np.sum(Y * np.log(p), -1))
    r = (p - Y) / B
    return scale * loss, scale * _flat(x.T @ r, r.sum(0))


def _np_penalised_loss(theta, lam, scale):
    """Scaled CE + lam * mean_i (||d ce_i / d x_i|| - 1)^2, with d ce_i / d x_i = W (p_i - y_i)."""
    w, b = _wb(theta)
    x = X.reshape(B, D).astype(np.float64)
    z = x @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ce = -np.sum(Y * np.log(p), -1)
    norms = np.linalg.norm((p - Y) @ w.T, axis=-1)
    return scale * ce.mean() + lam * np.mean((norms - 1.0) ** 2)


@pytest.mark.parametrize("adaptive,alpha", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_sharpness_aware_gradient_matches_numpy(adaptive, alpha):
    rho = 0.05
    obj = ExpertObjective(sam_rho=rho, sam_alpha=alpha, sam_adaptive=adaptive)
    loss, g = expert_gradient(MODEL, obj, jnp.asarray(THETA), jnp.asarray(X), jnp.asarray(Y))
    theta = THETA.astype(np.float64)
    want_loss, g0 = _np_loss_grad(theta)
    t = np.abs(theta) if adaptive else np.ones_like(theta)
    e = rho * t * t * g0 / np.linalg.norm(t * g0)
    _, gp = _np_loss_grad(theta + e)
    if alpha:
        gp = gp - alpha * (g0 - (g0 @ gp) / (gp @ gp) * gp)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), gp, rtol=1e-4, atol=1e-6)
    # The perturbation matters: SAM's direction differs from the plain gradient.
    assert not np.allclose(gp, g0, rtol=1e-3)


def test_loss_scale_and_gradient_penalty_match_finite_differences():
    lam, scale = 2.0, 0.55
    obj = ExpertObjective(grad_penalty=lam, loss_scale=(scale,))
    loss, g = expert_gradient(MODEL, obj, jnp.asarray(THETA), jnp.asarray(X), jnp.asarray(Y),
                              scale)
    theta = THETA.astype(np.float64)
    np.testing.assert_allclose(float(loss), _np_penalised_loss(theta, lam, scale), rtol=1e-5)
    eps = 1e-6
    fd = np.array([(_np_penalised_loss(theta + eps * u, lam, scale)
                    - _np_penalised_loss(theta - eps * u, lam, scale)) / (2 * eps)
                   for u in np.eye(theta.size)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-6)
    # Without the penalty the gradient is the scaled closed form.
    _, g_plain = expert_gradient(MODEL, ExpertObjective(loss_scale=(scale,)), jnp.asarray(THETA),
                                 jnp.asarray(X), jnp.asarray(Y), scale)
    np.testing.assert_allclose(np.asarray(g_plain), _np_loss_grad(theta, scale)[1], rtol=1e-4,
                               atol=1e-7)


def test_trainer_applies_the_loss_scale_of_each_epoch():
    # Without momentum or weight decay, loss x 0.5 in epoch 0 is SGD at half the lr in epoch 0.
    sgd = SGDConfig(lr=0.2, momentum=0.0, weight_decay=0.0, batch_size=B, decay_at=1.0)
    targets = jnp.asarray(Y)
    scaled = NetTrainer(MODEL, sgd, DSAConfig(strategy="none"),
                        ExpertObjective(loss_scale=(0.5,)))
    plain = NetTrainer(MODEL, sgd, DSAConfig(strategy="none"))
    t0, v0 = plain.init(jax.random.key(0), 2)
    a, va = scaled.train(t0.copy(), v0.copy(), jnp.asarray(X), targets, seed=0, first_step=0,
                         num_steps=2, total_steps=2)  # epochs 0 and 1 (one step each)
    b, vb = plain.train(t0.copy(), v0.copy(), jnp.asarray(X), targets, seed=0, first_step=0,
                        num_steps=1, total_steps=2, lr=0.1)
    b, _ = plain.train(b, vb, jnp.asarray(X), targets, seed=0, first_step=1, num_steps=1,
                       total_steps=2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_experts_record_their_objective_and_refuse_another(tmp_path):
    x = jnp.asarray(RNG.normal(size=(12, 2, 3, 1)), jnp.float32)
    y = np.arange(12) % C
    kw = dict(num_classes=C, num_experts=2, epochs=1,
              sgd=SGDConfig(lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=4, decay_at=1.0),
              dsa_cfg=DSAConfig(strategy="none"), seed=0, description={"model": "mlp"},
              progress=False)
    sam = ExpertObjective(sam_rho=0.01, sam_alpha=0.3)
    smooth = train_experts(str(tmp_path / "sam"), MODEL, x, y, x, y, objective=sam, **kw)
    plain = train_experts(str(tmp_path / "plain"), MODEL, x, y, x, y, **kw)
    assert smooth.meta["objective"]["sam_rho"] == 0.01
    assert "objective" not in json.load(open(tmp_path / "plain" / "meta.json"))
    assert not np.allclose(smooth.params(0, 1), plain.params(0, 1))
    np.testing.assert_array_equal(smooth.params(0, 0), plain.params(0, 0))  # same init
    with pytest.raises(ExpertsMismatchError, match="objective"):
        train_experts(str(tmp_path / "plain"), MODEL, x, y, x, y, objective=sam, **kw)


@pytest.mark.parametrize("override,match", [
    (dict(loss_scale="0.5,x"), "experts.loss_scale"),
    (dict(loss_scale="0.5,0"), "must be positive"),
    (dict(sam_alpha=0.3), "sam_rho > 0"),
    (dict(grad_penalty=-1.0), "experts.grad_penalty"),
])
def test_bad_expert_objectives_name_the_key(override, match):
    from configs.dataset_distill import mtt_digits
    from jaxkd.dataset_distill.train import check_config, expert_objective

    config = mtt_digits.get_config("smoke")
    config.experts.update(override)
    with pytest.raises(errors.ConfigError, match=match):
        check_config(config)
    config = mtt_digits.get_config("smoke")
    config.experts.update(dict(loss_scale="0.5, 0.75", sam_rho=0.01, sam_alpha=0.3))
    assert expert_objective(config) == ExpertObjective(sam_rho=0.01, sam_alpha=0.3,
                                                       loss_scale=(0.5, 0.75))
