"""The dataset-distillation driver: outputs, resume, baselines and bad input."""

import json
import os
import shutil

import numpy as np
import pytest

from configs.dataset_distill import (ast_digits, dc_digits, dm_digits, dsa_digits, ftd_digits,
                                     mtt_digits, sre2l_digits)
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors, loop
from jaxkd.dataset_distill import train as dd_train
from jaxkd.dataset_distill.experts import MissingExpertsError


def _smoke(module, **overrides):
    c = module.get_config("smoke")
    c.distill.progress = False
    c.eval.cross_models = ""
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@pytest.fixture(scope="module")
def mtt_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mtt"))
    config = _smoke(mtt_digits, ipc=2)
    results = dd_train.train_and_evaluate(config, workdir)
    return workdir, config, results


def test_mtt_writes_the_synthetic_set_pictures_and_results(mtt_run):
    workdir, config, results = mtt_run
    syn = np.load(os.path.join(workdir, "synthetic.npz"))
    assert syn["images"].shape == (20, 8, 8, 1) and syn["images"].dtype == np.float32
    assert syn["labels"].tolist() == np.repeat(np.arange(10), 2).tolist()
    # The data set's own units: digits pixels are 0..16.
    assert syn["images"].min() >= -1e-4 and syn["images"].max() <= 16 + 1e-4
    assert syn["lr"].shape == () and syn["lr"] > 0
    for name in ("synthetic.png", "distill_curves.png", "metrics.jsonl", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    for key in ("eval/acc_mean", "eval/acc_std", "baseline/random/acc_mean",
                "baseline/class_mean/acc_mean", "baseline/full/acc_mean"):
        assert 0.0 <= results[key] <= 1.0, key
    assert json.load(open(os.path.join(workdir, "results.json"))) == pytest.approx(
        {k: v for k, v in results.items()})
    assert results["experts/disk_mb"] > 0


def test_resuming_gives_the_same_synthetic_set(mtt_run, tmp_path):
    workdir, config, _ = mtt_run
    short = _smoke(mtt_digits, ipc=2)
    short.experts.dir = os.path.join(workdir, "experts")
    short.distill.iterations = 2
    short.eval.baselines = False
    dd_train.train_and_evaluate(short, str(tmp_path))  # "interrupted" after 2 iterations
    full = _smoke(mtt_digits, ipc=2)
    full.experts.dir = os.path.join(workdir, "experts")
    full.eval.baselines = False
    dd_train.train_and_evaluate(full, str(tmp_path))  # resumes at 2, runs to 4
    a = np.load(os.path.join(workdir, "synthetic.npz"))
    b = np.load(os.path.join(tmp_path, "synthetic.npz"))
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["lr"], b["lr"])


def test_finished_evaluations_are_stored_and_reused_only_for_the_same_set(mtt_run, tmp_path):
    # A run interrupted during evaluation resumes at the next network: each network's
    # accuracies are stored as they finish, keyed on the synthetic set and the settings.
    workdir, config, results = mtt_run
    stored = json.load(open(os.path.join(workdir, "eval_protocol.json")))
    assert stored["acc"]["acc"] == pytest.approx([results["eval/acc_mean"]] * 2,
                                                 abs=results["eval/acc_std"] + 1e-6)
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    marked = dict(stored, acc={"acc": [0.123, 0.125]})
    json.dump(marked, open(copy / "eval_protocol.json", "w"))
    again = _smoke(mtt_digits, ipc=2)
    again.experts.dir = os.path.join(workdir, "experts")
    assert dd_train.train_and_evaluate(again, str(copy))["eval/acc_mean"] == pytest.approx(0.124)
    # Another synthetic set (one pixel changed) or other evaluation settings: recomputed.
    syn = dict(np.load(os.path.join(workdir, "synthetic.npz")))
    syn["images"][0, 0, 0, 0] += 1.0
    np.savez(tmp_path / "changed.npz", **syn)
    for case in ("changed", "epochs"):
        c = _smoke(mtt_digits, ipc=2)
        c.experts.dir = os.path.join(workdir, "experts")
        c.eval.baselines = False
        run = copy
        if case == "epochs":
            c.eval.epochs = 2.0
        else:
            c.distill.init_file, c.distill.iterations = str(tmp_path / f"{case}.npz"), 0
            run = tmp_path / case
            run.mkdir()
        json.dump(marked, open(run / "eval_protocol.json", "w"))
        out = dd_train.train_and_evaluate(c, str(run))
        fresh = json.load(open(run / "eval_protocol.json"))["acc"]["acc"]
        assert fresh != [0.123, 0.125], case
        assert out["eval/acc_mean"] == pytest.approx(np.mean(fresh))


def test_resuming_under_other_distillation_settings_is_refused(mtt_run, tmp_path):
    workdir, config, _ = mtt_run
    before = open(os.path.join(workdir, "config.json")).read()
    changed = _smoke(mtt_digits, ipc=2)
    changed.distill.lr_img = config.distill.lr_img * 10
    changed.mtt.syn_steps = config.mtt.syn_steps + 1
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
        dd_train.train_and_evaluate(changed, workdir)
    msg = str(e.value)
    assert "distill.lr_img" in msg and "mtt.syn_steps" in msg and "--workdir" in msg
    # The refused run leaves the workdir's config.json as it was.
    assert open(os.path.join(workdir, "config.json")).read() == before
    # Evaluation and logging settings are not distillation settings.
    same = dd_train.distill_settings(config)
    other = config.copy_and_resolve_references()
    other.eval.epochs += 1
    other.distill.progress = not other.distill.progress
    other.data.data_dir = "/elsewhere"
    assert dd_train.distill_settings(other) == same
    other.seed += 1
    assert dd_train.distill_settings(other) != same


def test_resume_check_tolerates_keys_of_another_version_and_refuses_changed_values(capsys):
    class Fake:  # a checkpointer whose latest step recorded these settings
        def __init__(self, settings):
            self.settings = settings

        def latest_step(self):
            return 7

        def read_meta(self, step):
            return {"settings": self.settings}

    now = {"mtt": {"syn_steps": 20, "new_option": 1}, "eval": {"epochs": 3}}
    dd_train._check_resume(Fake({"mtt": {"syn_steps": 20}, "eval": {"epochs": 1}}), now, "d")
    assert "mtt.new_option: only in the config" in capsys.readouterr().out
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="mtt.syn_steps: checkpoint has 10"):
        dd_train._check_resume(Fake({"mtt": {"syn_steps": 10}}), now, "d")
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="records no settings"):
        dd_train._check_resume(Fake(None), now, "d")


def test_dc_resumes_mid_outer_iteration_to_the_same_synthetic_set(tmp_path):
    # Iteration 3 is round 1 of outer iteration 1: its network comes from the checkpointed carry.
    def run(workdir, iterations):
        c = _smoke(dc_digits, ipc=2)
        c.distill.iterations = iterations
        c.eval.baselines, c.eval.num_nets, c.eval.epochs = False, 1, 1.0
        return dd_train.train_and_evaluate(c, str(workdir))

    once = run(tmp_path / "once", 4)
    run(tmp_path / "twice", 3)
    run(tmp_path / "twice", 4)
    a = np.load(tmp_path / "once" / "synthetic.npz")
    b = np.load(tmp_path / "twice" / "synthetic.npz")
    np.testing.assert_array_equal(a["images"], b["images"])
    assert 0.0 <= once["eval/acc_mean"] <= 1.0 and np.isfinite(once["distill/final_loss"])
    assert a["images"].shape == (20, 8, 8, 1)
    records = [json.loads(line) for line in open(tmp_path / "once" / "metrics.jsonl")]
    norms = [r["distill/train/grad_norm"] for r in records if "distill/train/grad_norm" in r]
    assert norms and all(np.isfinite(norms)) and max(norms) > 0  # the images did learn


def test_bad_inputs_give_one_clear_message(mtt_run, tmp_path):
    workdir, _, _ = mtt_run
    with pytest.raises(errors.ConfigError, match=r"ipc=200 is more than the \d+ training"):
        dd_train.train_and_evaluate(_smoke(mtt_digits, ipc=200), str(tmp_path))
    with pytest.raises(MissingExpertsError, match="no expert trajectories.*experts.train"):
        dd_train.train_and_evaluate(
            _smoke(mtt_digits, **{"experts.train": False,
                                  "experts.dir": str(tmp_path / "none")}), str(tmp_path))
    with pytest.raises(errors.ConfigError, match="beyond the saved trajectories"):
        dd_train.train_and_evaluate(
            _smoke(mtt_digits, **{"experts.train": False,
                                  "experts.dir": os.path.join(workdir, "experts"),
                                  "mtt.max_start_epoch": 5}), str(tmp_path))
    with pytest.raises(loop.NonFiniteError, match=r"at step 1\b.*config.distill.on_nonfinite"):
        dd_train.train_and_evaluate(
            _smoke(mtt_digits, **{"experts.train": False, "distill.lr_init": 1e30,
                                  "experts.dir": os.path.join(workdir, "experts")}),
            str(tmp_path / "diverged"))
    with pytest.raises(errors.ConfigError, match="config.method='kip'"):
        dd_train.check_config(_smoke(mtt_digits, method="kip"))


def test_a_synthetic_file_can_be_evaluated_and_a_wrong_one_is_refused(mtt_run, tmp_path):
    workdir, _, results = mtt_run
    path = os.path.join(workdir, "synthetic.npz")
    again = dd_train.train_and_evaluate(
        _smoke(mtt_digits, ipc=2, **{"distill.init_file": path, "distill.iterations": 0,
                                     "eval.baselines": False, "experts.train": False,
                                     "experts.dir": os.path.join(workdir, "experts")}),
        str(tmp_path / "eval"))
    # Same images (through the file's units and back), learned lr and protocol networks: the
    # accuracy of the run that wrote the file, up to float rounding (1 test image = 0.0028).
    assert abs(again["eval/acc_mean"] - results["eval/acc_mean"]) <= 0.006
    with pytest.raises(errors.ConfigError,
                       match=r"'images' has shape \(20, 8, 8, 1\), but sklearn_digits at "
                             r"ipc=3 needs \(30, 8, 8, 1\)"):
        dd_train.train_and_evaluate(
            _smoke(dm_digits, ipc=3, **{"distill.init_file": path}), str(tmp_path / "bad"))


def test_load_synthetic_puts_classes_in_order_and_checks_counts(tmp_path):
    data = dd_train.load_real("sklearn_digits")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, (20, 8, 8, 1)).astype(np.float32)
    labels = rng.permutation(np.repeat(np.arange(10), 2))
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    syn = dd_train.load_synthetic(str(tmp_path / "s.npz"), data, 2, soft=False)
    order = np.argsort(labels, kind="stable")
    assert np.argmax(syn["labels"], -1).tolist() == np.repeat(np.arange(10), 2).tolist()
    np.testing.assert_allclose(data.to_stored(syn["images"]), images[order], atol=1e-5)
    bad = np.repeat(np.arange(10), 2)
    bad[2] = 0  # three zeros, one one
    np.savez(tmp_path / "bad.npz", images=images, labels=bad)
    with pytest.raises(errors.ConfigError, match="images per class; config.ipc=2 needs exactly"):
        dd_train.load_synthetic(str(tmp_path / "bad.npz"), data, 2, soft=False)


def test_class_mean_init_starts_from_class_means_and_k_means_centroids():
    data = dd_train.load_real("sklearn_digits")
    x, y = np.asarray(data.x), data.y
    one = dd_train.init_synthetic(_smoke(mtt_digits, ipc=1, **{"distill.init": "class_mean"}),
                                  data, None, None)
    want = np.stack([x[y == c].mean(0) for c in range(10)])
    np.testing.assert_allclose(one["images"], want, rtol=1e-5, atol=1e-6)
    three = dd_train.init_synthetic(
        _smoke(mtt_digits, ipc=3, **{"distill.init": "class_mean"}), data, None, None)
    images = np.asarray(three["images"]).reshape(10, 3, -1)
    for c in range(10):  # a fixed point of Lloyd's algorithm: each centre is its cluster's mean
        members = x[y == c].reshape(int(np.sum(y == c)), -1)
        assign = ((members[:, None] - images[c][None]) ** 2).sum(-1).argmin(1)
        for j in range(3):
            np.testing.assert_allclose(images[c, j], members[assign == j].mean(0), atol=1e-4)
    np.testing.assert_array_equal(np.argmax(three["labels"], -1), np.repeat(np.arange(10), 3))


def test_ftd_ema_saves_the_moving_average_of_the_images(tmp_path):
    # Three short DM runs from the same draws: the EMA of 2 iterations is d^2 x0 + d (1 - d) x1
    # + (1 - d) x2, with x1, x2 the plain runs' images after 1 and 2 iterations (the stored
    # units are an affine map of the normalised ones, which an average commutes with).
    fast = {"eval.num_nets": 1, "eval.epochs": 1.0, "eval.baselines": False}
    images = {}
    for name, iterations, ema in (("x1", 1, 0.0), ("x2", 2, 0.0), ("ema", 2, 0.3)):
        config = _smoke(dm_digits, ipc=2, **fast, **{"distill.iterations": iterations,
                                                     "distill.ema": ema})
        dd_train.train_and_evaluate(config, str(tmp_path / name))
        images[name] = np.load(tmp_path / name / "synthetic.npz")["images"]
    config = _smoke(dm_digits, ipc=2)
    data = dd_train.load_real(config.data.name)
    x0 = data.to_stored(dd_train.init_synthetic(config, data, None, None)["images"])
    assert not np.allclose(images["x2"], x0)  # the images moved
    d = 0.3
    want = d * d * x0 + d * (1 - d) * images["x1"] + (1 - d) * images["x2"]
    np.testing.assert_allclose(images["ema"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(errors.ConfigError, match="config.distill.ema"):
        dd_train.check_config(_smoke(dm_digits, **{"distill.ema": 1.0}))


def test_method_label_names_the_config_files_method_and_its_options():
    label = lambda module, **kw: dd_train.method_label(_smoke(module, **kw))
    assert label(dc_digits) == "dc" and label(dsa_digits) == "dsa"
    assert label(mtt_digits) == "mtt" and label(ftd_digits) == "ftd" and label(ast_digits) == "ast"
    assert label(dm_digits) == "dm" and label(dm_digits, **{"distill.ema": 0.9}) == "dm + image EMA"
    assert (label(mtt_digits, **{"distill.labels": "expert", "mtt.hypergrad": "tesla"})
            == "mtt + TESLA gradient + DATM soft labels")
    assert label(ftd_digits, **{"distill.fyi": True}) == "ftd + FYI"
    assert label(sre2l_digits) == "sre2l + per-crop relabel"
    assert label(sre2l_digits, **{"sre2l.relabel": "image"}) == "sre2l + per-image relabel"


def test_ast_and_ftd_configs_train_their_own_experts(mtt_run, tmp_path, capsys):
    # AST's experts (loss x 0.5 in epoch 0, gradient penalty) leave MTT's plain trajectory from
    # the same initialisation; FTD's config asks for GSAM experts and an image EMA.
    workdir, _, _ = mtt_run
    fast = {"eval.num_nets": 1, "eval.epochs": 1.0, "eval.baselines": False,
            "experts.epochs": 1, "distill.iterations": 1, "mtt.max_start_epoch": 1}
    config = _smoke(ast_digits, ipc=2, **fast)
    results = dd_train.train_and_evaluate(config, str(tmp_path))
    assert 0.0 <= results["eval/acc_mean"] <= 1.0
    out = capsys.readouterr().out  # the results table names the config's method, not "mtt"
    assert "ast on sklearn_digits, ipc 2" in out and "ast synthetic (convnet)" in out
    meta = json.load(open(tmp_path / "experts" / "meta.json"))
    assert meta["objective"]["loss_scale"][:2] == [0.5, 0.5]
    assert meta["objective"]["grad_penalty"] == 2.0
    ast_experts = np.load(tmp_path / "experts" / "epoch_0001.npy")
    plain = np.load(os.path.join(workdir, "experts", "epoch_0001.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "experts" / "epoch_0000.npy"),
                                  np.load(os.path.join(workdir, "experts", "epoch_0000.npy")))
    assert not np.allclose(ast_experts, plain, atol=1e-4)
    ftd = _smoke(ftd_digits, ipc=2)
    assert dd_train.expert_objective(ftd).sam_rho == 0.01 and ftd.distill.ema > 0
    dd_train.check_config(ftd)


def test_full_data_baseline_is_shared_through_its_cache_file(mtt_run, tmp_path):
    workdir, config, results = mtt_run
    shared = json.load(open(os.path.join(workdir, "full_baseline.json")))
    assert shared["acc"]["full"] == pytest.approx(
        [results["baseline/full/acc_mean"]] * len(shared["acc"]["full"]), abs=0.5)
    # Copied into another run's workdir (another ipc and method, same evaluation settings), it
    # is used as it is: a marked value comes back instead of a recomputed one.
    marked = {"key": shared["key"], "acc": {"full": [0.123] * len(shared["acc"]["full"])}}
    json.dump(marked, open(tmp_path / "full_baseline.json", "w"))
    other = _smoke(dm_digits, ipc=3)
    data = dd_train.load_real(other.data.name)
    model = dd_train._model(other.eval.model.name, other.eval.model.kwargs.to_dict(), data, "m")
    ecfg = dd_train.eval_lib.EvalConfig(
        num_nets=other.eval.num_nets, epochs=other.eval.epochs, sgd=dd_train._sgd(other.eval.sgd),
        dsa=dd_train._dsa(other.eval.dsa), seed=other.eval.seed)
    acc = dd_train.baselines(other, data, model, ecfg, str(tmp_path))
    assert acc["full"] == [0.123] * len(shared["acc"]["full"])
    assert set(acc) == {"random", "class_mean", "full"}
    # Settings the baselines never read (cross-architecture networks, the learned lr) keep it.
    other.eval.cross_models, other.eval.learned_lr = "", not other.eval.learned_lr
    acc = dd_train.baselines(other, data, model, ecfg, str(tmp_path))
    assert acc["full"] == [0.123] * len(shared["acc"]["full"])
    # Other evaluation settings: the stored value does not apply and is recomputed.
    other.eval.full_epochs = 2.0
    acc = dd_train.baselines(other, data, model, ecfg, str(tmp_path))
    assert acc["full"] != [0.123] * len(shared["acc"]["full"])
