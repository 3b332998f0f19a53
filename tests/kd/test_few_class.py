"""Few-class distillation (LELP): relabelling, subspaces and splits, targets, loss, end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.kd import lelp_digits
from jaxkd import data as data_lib
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors
from jaxkd.kd import few_class as fc
from jaxkd.losses import few_class as fc_losses


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _source(labels, num_classes=10):
    labels = np.asarray(labels, np.int32)
    info = data_lib.DatasetInfo(name="toy", split="train", num_classes=num_classes, shape=(2, 2, 1),
                                mean=(0.0,), std=(1.0,), num_examples=len(labels))
    images = np.arange(len(labels) * 4, dtype=np.uint8).reshape(len(labels), 2, 2, 1)
    return data_lib.ArraySource(images, labels, info)


# ------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("rule,expected", [("parity", lambda y: y % 2),
                                           ("halves", lambda y: (y >= 5).astype(int))])
def test_relabelled_source(rule, expected):
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 4])
    src = _source(y)
    out = fc.relabel_source(src, rule)
    np.testing.assert_array_equal(out.labels, expected(y))
    np.testing.assert_array_equal(out.images, src.images)
    assert out.info.num_classes == 2 and out.info.name == f"toy_{rule}"
    assert out.info.num_examples == len(y) and out[3]["label"] == expected(y)[3]
    with pytest.raises(errors.ConfigError, match="relabel"):
        fc.relabel_source(src, "nosuchrule")


def test_fine_slots_place_each_digit_in_its_class_block():
    y = np.arange(10)
    slots, s = fc.fine_slots(y, y % 2)
    assert s == 5
    np.testing.assert_array_equal(slots, (y % 2) * 5 + y // 2)  # 0,2,4,6,8 -> 0..4; odd -> 5..9


# -------------------------------------------------------------------------- subspace and split
def test_null_space_projector_against_normal_equations():
    w = np.random.default_rng(0).normal(size=(7, 2))
    p = fc.null_space_projector(w)
    ref = np.eye(7) - w @ np.linalg.inv(w.T @ w) @ w.T
    np.testing.assert_allclose(p, ref, atol=1e-10)
    np.testing.assert_allclose(p @ w, 0.0, atol=1e-10)


def test_principal_directions_against_covariance_eigendecomposition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ \
        np.linalg.qr(rng.normal(size=(6, 6)))[0] + 3.0
    mean, v, var = fc.principal_directions(x, 3)
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(evals)[::-1][:3]
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(var, evals[order], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(v * evecs[:, order], 0)), 1.0, atol=1e-8)
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-10)
    # The sign rule: each direction's largest-magnitude entry is positive.
    assert np.all(v[np.abs(v).argmax(0), np.arange(3)] > 0)


def test_rotation_split_logits_match_a_direct_numpy_computation():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(60, 8))
    labels = np.repeat([0, 1], 30)
    kernel = rng.normal(size=(8, 2))
    proj = fc.null_space_projector(kernel)
    splits = fc.fit_splits(emb, labels, 2, projector=proj, dim=3, subclasses=3,
                           split="rotation", seed=5)
    out = fc.split_logits(emb, splits, projector=proj, beta=0.5)
    assert out.shape == (60, 2, 3)
    for c in range(2):
        xc = emb[labels == c] @ proj
        u, sv, vt = np.linalg.svd(xc - xc.mean(0), full_matrices=False)
        v = vt[:3].T
        var = sv[:3] ** 2 / (len(xc) - 1)
        y = (emb @ proj - xc.mean(0)) @ v / np.sqrt(var.mean())
        q = splits[c].rotation
        np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-10)
        # Equal up to the sign of each principal direction (SVD signs are arbitrary).
        signs = np.sign(np.sum(v * splits[c].directions, 0))
        np.testing.assert_allclose(out[:, c], (y * signs) @ q / 0.5, rtol=1e-4, atol=1e-4)
    # The principal directions are orthogonal to the classifier: the split ignores the logits.
    np.testing.assert_allclose(kernel.T @ splits[0].directions, 0.0, atol=1e-10)
    # Deterministic: the same table twice.
    again = fc.fit_splits(emb, labels, 2, projector=proj, dim=3, subclasses=3, split="rotation",
                          seed=5)
    np.testing.assert_array_equal(fc.split_logits(emb, again, projector=proj, beta=0.5), out)


def test_kmeans_split_recovers_blobs_and_its_logits_are_negative_distances():
    rng = np.random.default_rng(3)
    centres = np.array([[8.0, 0, 0, 0], [-8.0, 0, 0, 0], [0, 8.0, 0, 0]])
    fine = np.repeat([0, 1, 2], 40)
    emb = centres[fine] + rng.normal(size=(120, 4))
    labels = np.zeros(120, int)
    splits = fc.fit_splits(emb, labels, 1, projector=None, dim=2, subclasses=3, split="kmeans",
                           seed=0)
    logits = fc.split_logits(emb, splits, projector=None, beta=2.0)
    assign = logits[:, 0].argmax(-1)
    assert fc.purity(assign, fine) == 1.0
    y = fc.subspace_coords(emb, splits[0], None)
    ref = -((y[:, None, :] - splits[0].centroids[None]) ** 2).sum(-1) / 2.0
    np.testing.assert_allclose(logits[:, 0], ref, rtol=1e-5)
    np.testing.assert_array_equal(
        fc.kmeans(y, 3, seed=0), splits[0].centroids)  # deterministic given the seed


def test_purity():
    assert fc.purity(np.array([0, 0, 1, 1]), np.array([3, 3, 4, 5])) == 0.75


# ----------------------------------------------------------------------- targets and the loss
def test_targets_factorise_into_teacher_class_probs_times_within_class_split():
    rng = np.random.default_rng(4)
    z, sub = rng.normal(size=(5, 2)) * 3, rng.normal(size=(5, 2, 4))
    out = np.asarray(fc_losses.pseudo_subclass_log_targets(jnp.asarray(z), jnp.asarray(sub),
                                                           temperature=2.0))
    ref = (_np_log_softmax(z / 2.0)[:, :, None] + _np_log_softmax(sub)).reshape(5, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=1e-5)
    # Aggregating the targets gives back the teacher's softened class probabilities.
    np.testing.assert_allclose(np.asarray(fc_losses.aggregate_log_probs(jnp.asarray(out), 2)),
                               _np_log_softmax(z / 2.0), rtol=1e-5, atol=1e-6)


def test_aggregate_log_probs_sums_each_class_block():
    logits = np.random.default_rng(5).normal(size=(3, 6))
    p = np.exp(_np_log_softmax(logits))
    ref = np.log(np.stack([p[:, 0:3].sum(-1), p[:, 3:6].sum(-1)], -1))
    np.testing.assert_allclose(np.asarray(fc_losses.aggregate_log_probs(jnp.asarray(logits), 2)),
                               ref, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be split"):
        fc_losses.aggregate_log_probs(jnp.zeros((3, 7)), 2)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_lelp_loss_value_and_gradient_match_numpy(temperature):
    rng = np.random.default_rng(6)
    s = rng.normal(size=(5, 6)) * 2
    log_t = _np_log_softmax(rng.normal(size=(5, 6)) * 2)
    mask = np.array([1, 1, 0, 1, 1], np.float64)
    value, grad = jax.value_and_grad(
        lambda x: fc_losses.lelp_loss(x, jnp.asarray(log_t, jnp.float32),
                                      temperature=temperature, mask=jnp.asarray(mask)))(
        jnp.asarray(s, jnp.float32))
    p, log_q = np.exp(log_t), _np_log_softmax(s / temperature)
    kl = (p * (log_t - log_q)).sum(-1)
    np.testing.assert_allclose(value, temperature**2 * (kl * mask).sum() / mask.sum(), rtol=1e-5)
    # Closed form: d/ds T^2 KL(p || softmax(s/T)) = T (q - p), times the example weight.
    ref = temperature * (np.exp(log_q) - p) * (mask / mask.sum())[:, None]
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)
    # ... and against central finite differences of the float64 NumPy loss.
    def np_loss(x):
        lq = _np_log_softmax(x / temperature)
        return temperature**2 * ((p * (log_t - lq)).sum(-1) * mask).sum() / mask.sum()
    eps, fd = 1e-5, np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        d = np.zeros_like(s)
        d[idx] = eps
        fd[idx] = (np_loss(s + d) - np_loss(s - d)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-6)


def test_lelp_loss_one_hot_targets_are_cross_entropy_and_empty_mask_is_zero():
    s = jnp.asarray(np.random.default_rng(7).normal(size=(4, 6)), jnp.float32)
    y = np.array([0, 5, 2, 3])
    one_hot = np.full((4, 6), -np.inf, np.float32)
    one_hot[np.arange(4), y] = 0.0
    ce = -_np_log_softmax(np.asarray(s, np.float64))[np.arange(4), y].mean()
    np.testing.assert_allclose(fc_losses.lelp_loss(s, jnp.asarray(one_hot)), ce, rtol=1e-5)
    g = jax.grad(lambda x: fc_losses.lelp_loss(x, jnp.asarray(one_hot)))(s)
    assert np.all(np.isfinite(g))
    zero = jnp.zeros(4)
    value, g = jax.value_and_grad(lambda x: fc_losses.lelp_loss(x, jnp.asarray(one_hot),
                                                                mask=zero))(s)
    assert float(value) == 0.0 and np.all(np.asarray(g) == 0.0)


def test_lelp_objective_mixes_aggregated_ce_and_the_distillation_term():
    rng = np.random.default_rng(8)
    s = rng.normal(size=(4, 6))
    log_t = _np_log_softmax(rng.normal(size=(4, 6)))
    y = np.array([0, 1, 1, 0])
    loss, aux = fc_losses.lelp_objective(jnp.asarray(s), jnp.asarray(log_t), jnp.asarray(y),
                                         num_classes=2, temperature=2.0, alpha=0.3)
    p = np.exp(_np_log_softmax(s))
    agg = np.log(np.stack([p[:, :3].sum(-1), p[:, 3:].sum(-1)], -1))
    ce = -agg[np.arange(4), y].mean()
    kd = 4.0 * (np.exp(log_t) * (log_t - _np_log_softmax(s / 2.0))).sum(-1).mean()
    np.testing.assert_allclose(aux["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["lelp"], kd, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.7 * ce + 0.3 * kd, rtol=1e-5)


# ------------------------------------------------------------------------------------ config
def _smoke():
    c = lelp_digits.get_config("smoke")
    c.train.progress = False
    # A tiny MLP teacher keeps the test fast; the config's ConvNet runs in tests/test_configs.py.
    c.teacher.model, c.teacher.model_kwargs = "mlp", {"hidden": (32,)}
    c.teacher.steps, c.train.steps = 20, 10
    c.train.eval_every = 0
    return c


@pytest.mark.parametrize("key,value,match", [
    ("lelp.subclasses", 1, "subclasses=1 must be >= 2"),
    ("lelp.subspace_dim", 3, "subclasses == config.lelp.subspace_dim"),
    ("lelp.split", "agglomerative", "config.lelp.split"),
    ("lelp.beta", 0.0, "beta"),
    ("few_class.relabel", "mod3", "config.few_class.relabel"),
    ("data.augment.mixup_alpha", 0.2, "mixup_alpha"),
    ("teacher.num_teachers", 2, "one live teacher"),
    ("kd.source", "ema", "one live teacher"),
    ("kd.feature.loss", "fitnet", "feature.loss must be"),
])
def test_bad_config_is_a_config_error(key, value, match):
    c = _smoke()
    node, leaf = c, key.split(".")
    for k in leaf[:-1]:
        node = node[k]
    node[leaf[-1]] = value
    with pytest.raises(errors.ConfigError, match=match):
        fc.validate_config(c)


def test_subspace_larger_than_the_embedding_is_a_config_error(tmp_path):
    c = _smoke()
    c.lelp.split, c.lelp.subspace_dim = "kmeans", 31  # 32 features, 2 of them the classifier's
    with pytest.raises(errors.ConfigError, match="exceeds the 30 dimensions"):
        fc.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")  # failed before training anything
    c.lelp.layer = "nosuchlayer"
    with pytest.raises(errors.ConfigError, match="no such layer"):
        fc.train_and_evaluate(c, str(tmp_path))


def test_registered_as_an_experiment():
    import jaxkd.kd  # pylint: disable=g-import-not-at-top

    assert jaxkd.kd.get_experiment("lelp") is fc.train_and_evaluate


def test_config_args():
    assert lelp_digits.get_config().num_seeds == 5
    c = lelp_digits.get_config("split=kmeans,subclasses=3,dim=2,relabel=halves,seeds=2")
    assert (c.lelp.split, c.lelp.subclasses, c.lelp.subspace_dim) == ("kmeans", 3, 2)
    assert c.few_class.relabel == "halves" and c.num_seeds == 2 and c.experiment == "lelp"
    with pytest.raises(ValueError, match="split"):
        lelp_digits.get_config("split=pca")


# -------------------------------------------------------------------------------- end to end
def test_smoke_end_to_end_and_rerun_trains_nothing(tmp_path):
    workdir = str(tmp_path)
    results = fc.train_and_evaluate(_smoke(), workdir)
    for key in ("teacher/acc", "scratch/acc_mean", "scratch/acc_std", "kd/acc_mean",
                "kd/acc_std", "lelp/acc_mean", "lelp/acc_std", "oracle/acc_mean"):
        assert 0.0 <= results[key] <= 1.0, key
    on_disk = json.load(open(tmp_path / "results.json"))
    assert on_disk["lelp/acc_mean"] == pytest.approx(results["lelp/acc_mean"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "kd_seed0", "lelp_seed0", "oracle_seed0", "scratch_seed0", "teacher"]
    for name in ("accuracy_curves.png", "lelp_subspace.png", "lelp/table.npz", "lelp/table.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    table = np.load(tmp_path / "lelp" / "table.npz")
    n = len(data_lib.load("sklearn_digits", "train"))
    assert table["log_targets"].shape == (n, 10)  # 2 classes x 5 pseudo-subclasses
    np.testing.assert_allclose(np.exp(table["log_targets"]).sum(-1), 1.0, rtol=1e-4)
    info = json.load(open(tmp_path / "lelp" / "table.json"))
    assert 0.0 < info["purity_one_subclass"] <= info["purity"] <= 1.0
    mtime = os.path.getmtime(tmp_path / "lelp" / "table.npz")
    # Rerun: every run is finished, the table is read back, and the results are the same.
    again = fc.train_and_evaluate(_smoke(), workdir)
    assert os.path.getmtime(tmp_path / "lelp" / "table.npz") == mtime
    for key in ("teacher/acc", "scratch/acc_mean", "kd/acc_mean", "lelp/acc_mean",
                "oracle/acc_mean"):
        assert again[key] == pytest.approx(results[key]), key
    # Another split would need another table: refused, the workdir's table is kept.
    c = _smoke()
    c.lelp.beta = 2.0
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="another teacher or config"):
        fc.train_and_evaluate(c, workdir)
    assert os.path.getmtime(tmp_path / "lelp" / "table.npz") == mtime
