"""Experts on disk (resume, reuse checks), the lockstep trainer, and the baselines' sets."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.dataset_distill import evaluate as eval_lib
from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.experts import (ExpertsMismatchError, MissingExpertsError,
                                           Trajectories, train_experts)
from jaxkd.dataset_distill.nets import FlatModel, NetTrainer, SGDConfig, batch_indices
from jaxkd.models.mlp import MLP

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(40, 4, 4, 1)), jnp.float32)
Y = np.arange(40) % 4
MODEL = FlatModel.create(MLP(num_classes=4, hidden=(8,)), (4, 4, 1))
SGD = SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=16, decay_at=1.0)
DSA = DSAConfig(strategy="crop")


def _experts(directory, epochs, **kw):
    return train_experts(directory, MODEL, X, Y, X, Y, num_classes=4, num_experts=2,
                         epochs=epochs, sgd=kw.pop("sgd", SGD), dsa_cfg=DSA, seed=0,
                         description={"model": "mlp"}, progress=False, **kw)


def test_interrupted_experts_resume_to_the_same_trajectories(tmp_path):
    once = _experts(str(tmp_path / "a"), 3)
    _experts(str(tmp_path / "b"), 1)
    twice = _experts(str(tmp_path / "b"), 3)  # continues from epoch 1 (momentum buffers too)
    assert once.epochs == twice.epochs == 3
    for e in range(4):
        np.testing.assert_array_equal(once.params(1, e), twice.params(1, e))
    assert not np.allclose(once.params(0, 3), once.params(0, 0))
    assert once.accuracy.shape == (4, 2)
    assert once.disk_bytes() >= 4 * 2 * MODEL.num_params * 4
    # Only the latest momentum buffer is kept.
    assert sorted(f for f in os.listdir(tmp_path / "b") if f.startswith("velocity")) == [
        "velocity_0003.npy"]


def test_experts_refuse_other_settings_and_missing_epochs(tmp_path):
    _experts(str(tmp_path), 1)
    with pytest.raises(ExpertsMismatchError, match="sgd: on disk"):
        _experts(str(tmp_path), 2, sgd=SGDConfig(lr=0.2, momentum=0.9, weight_decay=0.0,
                                                 batch_size=16, decay_at=1.0))
    with pytest.raises(IndexError, match="beyond the saved trajectories"):
        Trajectories(str(tmp_path)).params(0, 5)
    with pytest.raises(MissingExpertsError, match="no expert trajectories"):
        Trajectories(str(tmp_path / "nowhere"))


def test_trainer_split_into_calls_equals_one_call():
    trainer = NetTrainer(MODEL, SGD, DSA)
    targets = jnp.eye(4)[Y]
    t0, v0 = trainer.init(jax.random.key(0), 3)
    a, _ = trainer.train(t0.copy(), v0.copy(), X, targets, seed=1, first_step=0, num_steps=7,
                         total_steps=7)
    b, vb = trainer.train(t0.copy(), v0.copy(), X, targets, seed=1, first_step=0, num_steps=3,
                          total_steps=7)
    b, _ = trainer.train(b, vb, X, targets, seed=1, first_step=3, num_steps=4, total_steps=7)
    np.testing.assert_array_equal(a, b)
    acc = trainer.accuracy(a, X, Y, batch_size=7)  # batches that do not divide 40
    assert acc.shape == (3,) and np.all((acc >= 0) & (acc <= 1))


@pytest.mark.parametrize("per_net", [False, True])
def test_one_step_per_network_equals_the_vmapped_step(per_net):
    # A 2-D ConvNet trains one network at a time by default (grouped convolutions are slow on
    # XLA:CPU); the MLP vmaps. Either form is the same computation.
    from jaxkd.models.registry import build

    conv = FlatModel.create(build("convnet", num_classes=4, width=4, depth=1, norm="instance"),
                            (4, 4, 1))
    assert NetTrainer(conv, SGD, DSA).vmap is False and NetTrainer(MODEL, SGD, DSA).vmap is True
    trainer = NetTrainer(conv, SGD, DSA)
    t0, v0 = trainer.init(jax.random.key(0), 3)
    x = jnp.stack([X, -X, 2 * X]) if per_net else X
    targets = jnp.eye(4)[Y]
    targets = jnp.stack([targets, targets[::-1], targets]) if per_net else targets
    run = lambda vmap: trainer.train(t0.copy(), v0.copy(), x, targets, seed=1, first_step=0,
                                     num_steps=5, total_steps=5, per_net=per_net, vmap=vmap)
    (a, va), (b, vb) = run(False), run(True)
    assert a.shape == b.shape == t0.shape and not np.allclose(a, t0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(va, vb, rtol=1e-4, atol=1e-5)
    vmapped = NetTrainer(conv, SGD, DSA, vmap=True)
    np.testing.assert_allclose(trainer.accuracy(a, X, Y, batch_size=7),
                               vmapped.accuracy(a, X, Y, batch_size=7))


def test_batch_indices_cover_each_example_once_per_epoch():
    idx = batch_indices(np.random.default_rng(0), 10, 4, 5)  # 20 draws = two epochs
    assert idx.shape == (5, 4)
    flat = idx.reshape(-1)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))


def test_random_subset_and_class_means():
    labels = np.repeat(np.arange(3), 5)
    x = RNG.normal(size=(15, 2, 2, 1)).astype(np.float32)
    idx = eval_lib.random_subset(labels, 2, 3, np.random.default_rng(0))
    assert labels[idx].tolist() == [0, 0, 1, 1, 2, 2] and len(set(idx)) == 6
    with pytest.raises(ValueError, match="fewer than ipc=6"):
        eval_lib.random_subset(labels, 6, 3, np.random.default_rng(0))
    means = eval_lib.class_means(x, labels, 1, 3)
    np.testing.assert_allclose(means, np.stack([x[labels == c].mean(0) for c in range(3)]),
                               rtol=1e-6)
    centroids = eval_lib.class_means(x, labels, 5, 3)  # k = class size: the examples themselves
    for c in range(3):
        got = sorted(map(tuple, centroids[5 * c:5 * c + 5].reshape(5, -1).round(5)))
        want = sorted(map(tuple, x[labels == c].reshape(5, -1).round(5)))
        assert got == want


def test_an_instance_norm_resnet_evaluates_as_a_flat_model():
    # The digits configs' cross-architecture ResNet: no batch statistics, so the protocol's
    # flat-parameter trainer fits it; a few epochs on separable 8x8 images learn them.
    from jaxkd.models.registry import build

    model = FlatModel.create(build("resnet8", num_classes=2, norm="instance"), (8, 8, 1))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.arange(32) % 2
    x[y == 1, :4] += 2.0  # class 1: a bright top half
    cfg = eval_lib.EvalConfig(num_nets=2, epochs=10.0, seed=0,
                              sgd=SGDConfig(lr=0.05, batch_size=16),
                              dsa=DSAConfig(strategy="none"))
    acc = eval_lib.evaluate(model, jnp.asarray(x), jnp.eye(2)[y], jnp.asarray(x), y, cfg)
    assert acc.shape == (2,) and acc.min() >= 0.9
