"""Long-tailed KD: the split, class-balanced weights, DRW, the kd_weight hook, end to end."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs.kd import long_tail_digits
from jaxkd import data as data_lib
from jaxkd import losses, models
from jaxkd.core import errors, optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.core.metrics import MetricWriter, read_metrics
from jaxkd.kd import long_tail
from jaxkd.kd import steps as steps_lib
from jaxkd.kd import train


def _source(per_class=(40, 35, 50, 38), seed=0):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    rng = np.random.default_rng(seed)
    labels = labels[rng.permutation(len(labels))].astype(np.int32)
    images = rng.integers(0, 17, size=(len(labels), 8, 8, 1)).astype(np.uint8)
    info = data_lib.DatasetInfo(name="toy", split="train", num_classes=len(per_class),
                                shape=(8, 8, 1), mean=(8.0,), std=(4.0,),
                                num_examples=len(labels))
    return data_lib.ArraySource(images, labels, info)


# ------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("rho, order", [(10.0, (0, 1, 2, 3)), (7.5, (2, 0, 3, 1)), (1.0, None)])
def test_long_tail_counts_follow_the_exponential_profile(rho, order):
    src = _source()
    sub = long_tail.long_tail_subset(src, imbalance_ratio=rho, seed=3, class_order=order)
    order = order or (0, 1, 2, 3)
    n_max = 35  # the smallest class
    expected = np.zeros(4, int)
    for rank, c in enumerate(order):  # n = floor(n_max * (1 / rho)^(rank / (C - 1)))
        expected[c] = int(np.floor(n_max * (1.0 / rho) ** (rank / 3)))
    np.testing.assert_array_equal(np.bincount(sub.labels, minlength=4), expected)
    assert expected[order[0]] == n_max and len(sub) == expected.sum() == sub.info.num_examples
    # Every kept example is a row of the source with its own label.
    rows = {src.images[i].tobytes(): src.labels[i] for i in range(len(src))}
    assert all(rows[im.tobytes()] == lab for im, lab in zip(sub.images, sub.labels))


def test_long_tail_split_is_deterministic_in_its_seed():
    src = _source()
    a, b, c = (long_tail.long_tail_subset(src, imbalance_ratio=5.0, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.bincount(a.labels), np.bincount(c.labels))
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("kwargs, match", [
    (dict(imbalance_ratio=0.5), "imbalance_ratio"),
    (dict(imbalance_ratio=100.0), "class 3 with 0"),  # 35 / 100 < 1
    (dict(imbalance_ratio=2.0, class_order=(0, 1, 1, 2)), "permutation"),
])
def test_long_tail_subset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_tail.long_tail_subset(_source(), seed=0, **kwargs)


# ----------------------------------------------------------------------------- weights, DRW
def test_class_balanced_weights_match_the_numpy_formulas():
    counts = np.array([139, 89, 58, 37, 24, 15, 10, 6, 4, 2])
    for beta in (0.9, 0.999, 0.9999):
        w = (1.0 - beta) / (1.0 - beta ** counts.astype(np.float64))
        np.testing.assert_allclose(long_tail.class_balanced_weights(counts, beta=beta),
                                   w / w.mean(), rtol=1e-6)
    np.testing.assert_allclose(long_tail.class_balanced_weights(counts, kind="inverse"),
                               (1 / counts) / np.mean(1 / counts), rtol=1e-6)
    np.testing.assert_allclose(long_tail.class_balanced_weights(counts, beta=0.0), 1.0)
    with pytest.raises(ValueError, match="beta"):
        long_tail.class_balanced_weights(counts, beta=1.0)


def test_drw_batch_fn_switches_at_the_start_step_and_handles_mixup():
    w = np.array([0.5, 1.0, 2.5], np.float32)
    batch = {"label": np.array([2, 0, 1, 2], np.int32), "mask": np.array([1, 1, 1, 0], np.float32)}
    kd = long_tail.drw_batch_fn(w, 10, "kd_weight")
    np.testing.assert_array_equal(kd(batch, 9)["kd_weight"], np.ones(4))
    np.testing.assert_array_equal(kd(batch, 10)["kd_weight"], [2.5, 0.5, 1.0, 2.5])
    np.testing.assert_array_equal(kd(batch, 10)["mask"], batch["mask"])  # untouched
    ce = long_tail.drw_batch_fn(w, 10, "mask")
    np.testing.assert_array_equal(ce(batch, 0)["mask"], batch["mask"])
    np.testing.assert_array_equal(ce(batch, 11)["mask"], [2.5, 0.5, 1.0, 0.0])
    mixed = dict(batch, label2=np.array([0, 0, 2, 1], np.int32),
                 lam=np.array([0.25, 1.0, 0.5, 0.5], np.float32))
    np.testing.assert_allclose(kd(mixed, 10)["kd_weight"],
                               [0.25 * 2.5 + 0.75 * 0.5, 0.5, 0.5 * 1.0 + 0.5 * 2.5,
                                0.5 * 2.5 + 0.5 * 1.0])
    assert long_tail.drw_weights(w, 0, 0) is w  # drw_start = 0: weighted from the first step


def test_groups_split_classes_by_training_count():
    g = long_tail.group_classes([5, 50, 20, 1, 30], num_head=2, num_tail=1)
    assert {k: v.tolist() for k, v in g.items()} == {
        "head": [1, 4], "medium": [0, 2], "tail": [3]}


def test_train_run_feeds_batch_fn_the_step_of_each_update(tmp_path):
    """The hook DRW relies on: batch_fn(batch, step) sees steps 0, 1, ..., total - 1."""
    config = long_tail_digits.get_config("smoke")
    config.train.progress = False
    config.train.steps = 6
    src = _source(per_class=(20,) * 10)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    ctx = train.Context(config, str(tmp_path), mesh, src, src, 10,
                        MetricWriter(str(tmp_path), enabled=False))
    seen = []

    def batch_fn(batch, step):
        seen.append(step)
        return batch

    train.train_run(ctx, train.RunSpec("s", "mlp", {"hidden": (4,)}, 0, config.train,
                                       "config.train", config.optimizer, batch_fn=batch_fn))
    assert seen == list(range(6))


# -------------------------------------------------------------------------- kd_weight hook
@pytest.fixture(scope="module")
def kd_step():
    """One jitted KD step (T = 4, alpha = 0.5) shared by the tests below."""
    return _step_setup()


def _step_setup(temperature=4.0, alpha=0.5):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    student = models.build("mlp", num_classes=5, hidden=(16,))
    tmodel = models.build("mlp", num_classes=5, hidden=(8,))
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    build, _, sh = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, (6,), ema=False), jax.random.PRNGKey(0), mesh,
        "replicated")
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(1), (6,))
    teacher = steps_lib.Teacher.live(tmodel, t_vars, sharding.param_shardings(t_vars, mesh))
    step = steps_lib.make_train_step(
        student, tx, mesh=mesh, state_shardings=sh, teacher=teacher,
        distill=steps_lib.DistillConfig("hinton", alpha, temperature))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32),
             "mask": np.ones(8, np.float32)}
    s_logits = lambda state: np.asarray(
        student.apply({"params": state["params"]}, batch["image"], train=False), np.float64)
    t_logits = np.asarray(tmodel.apply(t_vars, batch["image"], train=False), np.float64)
    return build, step, batch, mesh, s_logits, t_logits


def _np_kl(s, t, temperature):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(t / temperature), log_softmax(s / temperature)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_kd_weight_zero_on_half_the_batch_gives_the_kd_loss_of_the_other_half(kd_step):
    build, step, batch, mesh, s_logits, t_logits = kd_step
    state = build()
    s = s_logits(state)
    weight = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    _, m = step(state, sharding.to_global_batch(dict(batch, kd_weight=weight), mesh))
    keep = weight.astype(bool)
    expected = 16.0 * _np_kl(s[keep], t_logits[keep], 4.0).mean()  # T^2 * mean KL, kept rows
    np.testing.assert_allclose(m["kd"], expected, rtol=1e-5)
    # The same, computed by the library loss on the kept rows only.
    np.testing.assert_allclose(m["kd"], losses.hinton_kd_loss(s[keep], t_logits[keep],
                                                              temperature=4.0), rtol=1e-5)
    ce = -(s - np.log(np.exp(s).sum(-1, keepdims=True)))[np.arange(8), batch["label"]].mean()
    np.testing.assert_allclose(m["ce"], ce, rtol=1e-5)  # CE still sees the whole batch


def test_kd_weight_is_a_weighted_mean_combined_with_the_mask(kd_step):
    build, step, batch, mesh, s_logits, t_logits = kd_step
    state = build()
    s = s_logits(state)
    weight = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 0.25, 4.0], np.float32)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    _, m = step(state, sharding.to_global_batch(dict(batch, mask=mask, kd_weight=weight), mesh))
    w = weight * mask
    np.testing.assert_allclose(m["kd"], 16.0 * (w * _np_kl(s, t_logits, 4.0)).sum() / w.sum(),
                               rtol=1e-5)


def test_a_weighted_mask_weights_ce_and_kd(kd_step):
    """What the DRW-weighted CE variants rely on (drw_batch_fn(..., "mask"))."""
    build, step, batch, mesh, s_logits, t_logits = kd_step
    state = build()
    s = s_logits(state)
    w = np.array([0.1, 2.0, 1.0, 0.0, 3.0, 1.0, 0.5, 4.0], np.float32)
    _, m = step(state, sharding.to_global_batch(dict(batch, mask=w), mesh))
    nll = -(s - np.log(np.exp(s).sum(-1, keepdims=True)))[np.arange(8), batch["label"]]
    np.testing.assert_allclose(m["ce"], (w * nll).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(m["kd"], 16.0 * (w * _np_kl(s, t_logits, 4.0)).sum() / w.sum(),
                               rtol=1e-5)


def test_kd_weight_all_ones_is_the_unweighted_step(kd_step):
    build, step, batch, mesh, _, _ = kd_step
    a, ma = step(build(), sharding.to_global_batch(batch, mesh))
    b, mb = step(build(), sharding.to_global_batch(dict(batch, kd_weight=np.ones(8, np.float32)),
                                                   mesh))
    for k in ("loss", "ce", "kd", "grad_norm"):
        np.testing.assert_allclose(mb[k], ma[k], rtol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------- experiment
def _smoke_config(**long_tail_overrides):
    c = long_tail_digits.get_config("smoke")
    c.train.progress = False
    c.teacher.model = "mlp"  # cheaper to compile than the ConvNet; the driver is the same
    c.teacher.model_kwargs = ml_collections.ConfigDict({"hidden": (64,)})
    for key, value in long_tail_overrides.items():
        c.long_tail[key] = value
    return c


@pytest.mark.parametrize("overrides, match", [
    (dict(imbalance_ratio=0.5), "imbalance_ratio"),
    (dict(imbalance_ratio=1000.0), "with 0 of its"),
    (dict(class_order="0,1,2"), "class_order"),
    (dict(weighting="sqrt"), "weighting"),
    (dict(drw_start=1.5), "drw_start"),
    (dict(num_head=6, num_tail=6), "num_head"),
    (dict(variants="kd,nope"), "variants"),
])
def test_bad_config_is_a_config_error_before_training(overrides, match, tmp_path):
    with pytest.raises(errors.ConfigError, match=match):
        long_tail.train_and_evaluate(_smoke_config(**overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_smoke_run_end_to_end(tmp_path):
    """Every output of the driver (resuming finished runs is train.train_run's, tested there).

    Two of the variants keep it fast (plain and re-weighted KD); all five run in
    tests/test_configs.py's smoke run of the config.
    """
    workdir = str(tmp_path)
    variants = ("kd", "kd_reweight")
    results = long_tail.train_and_evaluate(_smoke_config(variants=",".join(variants)), workdir)
    for name in ("results.json", "per_class.json", "per_class_accuracy.png",
                 "accuracy_curves.png", "metrics.jsonl", "teacher.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
        ["teacher"] + [f"{v}_seed0" for v in variants])
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert "scratch/acc_mean" not in on_disk
    for v in variants:
        for key in ("acc", "head_acc", "medium_acc", "tail_acc", "agreement"):
            assert 0.0 <= on_disk[f"{v}/{key}_mean"] <= 1.0
            assert on_disk[f"{v}/{key}_std"] == 0.0  # one seed
    assert on_disk["long_tail/num_train"] == 384  # digits, rho = 50: 139, 89, ..., 4, 2
    per_class = json.load(open(os.path.join(workdir, "per_class.json")))
    assert per_class["train_count"] == [139, 89, 58, 37, 24, 15, 10, 6, 4, 2]
    rows = read_metrics(workdir)
    assert any("kd_reweight/seed0/eval/tail_acc" in r for r in rows)
    assert on_disk["kd/acc_mean"] == pytest.approx(results["kd/acc_mean"])
    # The workdir keeps its recipe: resuming it with other weights is refused before training.
    with pytest.raises(errors.ConfigError, match="drw_start"):
        long_tail.train_and_evaluate(_smoke_config(variants=",".join(variants), drw_start=0.0),
                                     workdir)
    other_t = _smoke_config(variants=",".join(variants))
    other_t.kd.temperature = 3.0
    with pytest.raises(errors.ConfigError, match="config.kd.temperature=1.0 there, 3.0 now"):
        long_tail.train_and_evaluate(other_t, workdir)
    # Same seed and batches: the weights (on for the last third) alone make the runs differ.
    assert on_disk["kd_reweight/loss_mean"] != on_disk["kd/loss_mean"]
