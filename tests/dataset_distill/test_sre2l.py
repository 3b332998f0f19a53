"""SRe2L: BatchNorm statistics against NumPy, the crop, the teacher's reuse, the relabel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.dataset_distill.sre2l import (SRe2LConfig, StatisticsRecovery, bn_matching_loss,
                                         bn_statistics, random_resized_crop, train_teacher)

RNG = np.random.default_rng(0)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = x.reshape(x.shape[0], -1)
        h = nn.Dense(5, name="fc")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        return nn.Dense(3, name="head")(nn.relu(h))


def _variables():
    net = _Net()
    v = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)), train=False)
    # Running statistics other than the initial 0 / 1, so the loss has something to match.
    stats = {"bn": {"mean": jnp.asarray(RNG.normal(size=5), jnp.float32),
                    "var": jnp.asarray(RNG.uniform(0.5, 2.0, size=5), jnp.float32)}}
    return net, {**v, "batch_stats": stats}


def test_bn_statistics_and_loss_match_numpy():
    net, v = _variables()
    x = jnp.asarray(RNG.normal(size=(7, 4, 4, 1)), jnp.float32)
    logits, records = bn_statistics(net, v, x)
    np.testing.assert_allclose(logits, net.apply(v, x, train=False), rtol=1e-6)
    p = jax.tree.map(np.asarray, v["params"])
    h = np.asarray(x).reshape(7, -1) @ p["fc"]["kernel"] + p["fc"]["bias"]
    (mean, var, rm, rv), = records
    np.testing.assert_allclose(mean, h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, h.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(rm, v["batch_stats"]["bn"]["mean"])
    want = (np.linalg.norm(h.mean(0) - np.asarray(rm))
            + np.linalg.norm(h.var(0) - np.asarray(rv)))
    np.testing.assert_allclose(bn_matching_loss(records), want, rtol=1e-4)
    with pytest.raises(ValueError, match="norm='batch'"):
        bn_matching_loss([])


def test_random_resized_crop_is_the_identity_at_full_scale_and_zooms_otherwise():
    x = jnp.asarray(RNG.normal(size=(3, 8, 8, 2)), jnp.float32)
    same = random_resized_crop(x, jax.random.PRNGKey(0), 1.0, ratio=(1.0, 1.0))
    np.testing.assert_allclose(same, x, atol=1e-5)
    # A linear ramp stays a ramp, with a slope at least as steep (a crop magnifies).
    ramp = jnp.broadcast_to(jnp.arange(8, dtype=jnp.float32)[None, None, :, None], (3, 8, 8, 1))
    out = np.asarray(random_resized_crop(ramp, jax.random.PRNGKey(1), 0.3))
    slopes = np.diff(out[:, 4, :, 0], axis=-1)
    assert np.all(slopes <= 1.0 + 1e-5) and np.all(slopes > 0)
    assert np.all(out >= -1e-5) and np.all(out <= 7 + 1e-5)  # inside the image: no padding
    g = jax.grad(lambda a: jnp.sum(random_resized_crop(a, jax.random.PRNGKey(2), 0.5) ** 2))(x)
    assert float(jnp.linalg.norm(g)) > 0


def test_random_resized_crop_of_signals_is_linear_interpolation_of_a_segment():
    """[B, L, C]: each output sample interpolates the input linearly inside one segment of
    length fraction >= min_scale; recomputed with np.interp from the ramp's read-back positions."""
    x = np.random.default_rng(5).normal(size=(4, 40, 2)).astype(np.float32)
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (4, 40, 1))
    key = jax.random.PRNGKey(3)
    pos = np.asarray(random_resized_crop(jnp.asarray(ramp), key, 0.4))[..., 0]  # positions read
    out = np.asarray(random_resized_crop(jnp.asarray(x), key, 0.4))
    for i in range(4):
        span = pos[i, -1] - pos[i, 0]
        assert 0.4 * 39 - 1e-3 <= span <= 39 + 1e-3 and pos[i, 0] >= -1e-4
        np.testing.assert_allclose(np.diff(pos[i]), span / 39, rtol=1e-4)  # evenly spaced
        for c in range(2):
            np.testing.assert_allclose(out[i, :, c], np.interp(pos[i], np.arange(40), x[i, :, c]),
                                       rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(random_resized_crop(jnp.asarray(x), key, 1.0), x, atol=1e-5)
    # The length fraction is uniform on [min_scale, 1] (mean 0.7, some below 0.45 in 512).
    many = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (512, 40, 1))
    pos = np.asarray(random_resized_crop(jnp.asarray(many), key, 0.4))[..., 0]
    frac = (pos[:, -1] - pos[:, 0]) / 39
    assert abs(frac.mean() - 0.7) < 0.03 and frac.min() < 0.45 and frac.max() > 0.95


def test_recovery_gradient_relabel_and_the_teacher_is_reused(tmp_path):
    net, v = _variables()
    x = jnp.asarray(RNG.normal(size=(24, 4, 4, 1)), jnp.float32)
    y = np.arange(24) % 3
    kw = dict(num_classes=3, epochs=2, lr=0.05, batch_size=8, seed=0,
              description={"model": "net"})
    v1, acc1 = train_teacher(str(tmp_path), net, x, y, x, y, **kw)
    assert 0.0 <= acc1 <= 1.0
    v2, acc2 = train_teacher(str(tmp_path), net, x, y, x, y, **kw)  # read back, not retrained
    assert acc2 == acc1
    jax.tree.map(np.testing.assert_array_equal, v1, v2)
    assert not np.allclose(v1["batch_stats"]["bn"]["mean"], 0.0)  # running stats were trained
    v3, _ = train_teacher(str(tmp_path), net, x, y, x, y, **{**kw, "epochs": 1})  # retrained
    assert not np.allclose(v3["params"]["fc"]["kernel"], v1["params"]["fc"]["kernel"])

    m = StatisticsRecovery(net, v1, 3, 2, SRe2LConfig(r_bn=0.5, crop_min_scale=1.0,
                                                       temperature=2.0), seed=0)
    syn = {"images": x[:6], "labels": jnp.zeros((6, 3)), "lr": jnp.float32(0.0)}
    loss, grads, aux = m.loss_and_grad(syn, 0, 10)
    # Crops at scale 1 with ratio drawn in [3/4, 4/3] are not the identity; check the pieces'
    # weighting instead: loss = ce + r_bn * bn.
    np.testing.assert_allclose(float(loss), aux["ce"] + 0.5 * aux["bn"], rtol=1e-5)
    assert float(jnp.linalg.norm(grads["images"])) > 0 and not np.any(grads["labels"])
    # (jitted and eager float32 logits differ by rounding: ~1e-7 absolute near zero.)
    np.testing.assert_allclose(m.relabel(x[:6]), net.apply(v1, x[:6], train=False) / 2.0,
                               rtol=1e-6, atol=1e-6)
    cda = StatisticsRecovery(net, v1, 3, 2, SRe2LConfig(crop_min_scale=0.2, curriculum=True),
                             seed=0)
    assert cda.min_scale(0, 11) == 1.0 and cda.min_scale(10, 11) == pytest.approx(0.2)
    assert m.min_scale(5, 11) == 1.0  # no curriculum: the fixed minimum


def test_per_crop_relabelling_labels_each_augmented_batch():
    from jaxkd.dataset_distill.augment import DSAConfig  # pylint: disable=g-import-not-at-top
    from jaxkd.dataset_distill.nets import FlatModel, NetTrainer, SGDConfig  # noqa
    from jaxkd.models.mlp import MLP  # pylint: disable=g-import-not-at-top

    net, v = _variables()
    m = StatisticsRecovery(net, v, 3, 2, SRe2LConfig(temperature=2.0), seed=0)
    label = m.crop_labeller()
    x = jnp.asarray(RNG.normal(size=(12, 4, 4, 1)), jnp.float32)
    np.testing.assert_allclose(label(x), jax.nn.softmax(net.apply(v, x, train=False) / 2.0),
                               rtol=1e-6)
    assert StatisticsRecovery(net, v, 3, 2, SRe2LConfig(relabel="image"),
                              seed=0).crop_labeller() is None
    student = FlatModel.create(MLP(num_classes=3, hidden=(8,)), (4, 4, 1))
    sgd = SGDConfig(lr=0.1, batch_size=4, decay_at=1.0)

    def run(dsa_cfg, relabel, targets):
        trainer = NetTrainer(student, sgd, dsa_cfg, relabel=relabel)
        t, vel = trainer.init(jax.random.key(0), 2)
        return np.asarray(trainer.train(t, vel, x, targets, seed=0, first_step=0, num_steps=6,
                                        total_steps=6)[0])

    fixed = label(x)  # the teacher's labels of the whole, unaugmented images
    none, crop = DSAConfig(strategy="none"), DSAConfig(strategy="crop")
    # Without augmentation, labelling each batch is labelling the images once.
    np.testing.assert_allclose(run(none, label, jnp.zeros_like(fixed)), run(none, None, fixed),
                               rtol=1e-5, atol=1e-6)
    # With crops, the labels follow the crop (and the stored targets are not used).
    assert not np.allclose(run(crop, label, jnp.zeros_like(fixed)), run(crop, None, fixed),
                           atol=1e-4)


def test_config_checks_name_the_key():
    from configs.dataset_distill import sre2l_digits  # pylint: disable=g-import-not-at-top
    from jaxkd.core import errors  # pylint: disable=g-import-not-at-top
    from jaxkd.dataset_distill import train  # pylint: disable=g-import-not-at-top

    c = sre2l_digits.get_config("smoke")
    train.check_config(c)
    c.sre2l.teacher.kwargs.norm = "instance"
    with pytest.raises(errors.ConfigError, match="config.sre2l.teacher.kwargs.norm"):
        train.check_config(c)
    c = sre2l_digits.get_config("smoke")
    c.sre2l.relabel = "epoch"
    with pytest.raises(errors.ConfigError, match="config.sre2l.relabel"):
        train.check_config(c)
    c = sre2l_digits.get_config("smoke")
    c.sre2l.crop_min_scale = 0.0
    with pytest.raises(errors.ConfigError, match="crop_min_scale"):
        train.check_config(c)
    c = sre2l_digits.get_config("smoke")
    c.distill.labels = "expert"
    with pytest.raises(errors.ConfigError, match="labels must be 'hard' for sre2l"):
        train.check_config(c)
