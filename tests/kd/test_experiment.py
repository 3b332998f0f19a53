"""The KD experiment end to end: outputs, bad inputs, resume after SIGKILL/SIGTERM, multi-process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs.kd import digits
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors
from jaxkd.core.metrics import read_metrics
from jaxkd.kd import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _smoke(**overrides):
    c = digits.get_config("smoke")
    c.train.progress = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("kd_smoke"))
    results = train.train_and_evaluate(_smoke(), workdir)
    return workdir, results


def test_smoke_run_writes_every_output(smoke_run):
    workdir, results = smoke_run
    for name in ("config.json", "metrics.jsonl", "results.json", "teacher.json",
                 "accuracy_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "kd_seed0", "scratch_seed0", "teacher"]
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("teacher/acc", "scratch/acc_mean", "scratch/acc_std", "kd/acc_mean",
                "kd/acc_std", "kd/agreement_mean"):
        assert 0.0 <= on_disk[key] <= 1.0, key
        assert on_disk[key] == pytest.approx(results[key])
    # 30 teacher steps on digits already beat chance (10%) by far.
    assert on_disk["teacher/acc"] > 0.5
    rows = read_metrics(workdir)
    assert any("kd/seed0/train/kd" in r for r in rows)
    assert any("scratch/seed0/eval/acc" in r for r in rows)
    cfg = json.load(open(os.path.join(workdir, "config.json")))
    assert cfg["train"]["steps"] == 20
    # The student checkpoint records the teacher by path and hash only: no teacher params in it.
    c = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "kd_seed0"), read_only=True)
    meta = c.read_meta()
    assert meta["model"] == "mlp"
    teacher = json.load(open(os.path.join(workdir, "teacher.json")))
    assert len(teacher["sha256"]) == 64 and teacher["path"].endswith("checkpoints/teacher")
    assert meta["teacher_sha256"] == teacher["sha256"]
    assert meta["teacher_path"] == teacher["path"]
    # ... and no teacher array is in the student's state (only its own params/opt state).
    tree = c.restore_raw()
    assert set(tree.keys()) == {"step", "params", "batch_stats", "opt_state", "ema_params",
                                "rng", "nonfinite"}
    assert set(tree["params"].keys()) == {"dense1", "head"}  # the MLP student's layers only


def test_rerun_of_a_finished_experiment_trains_nothing_and_reports_the_same(smoke_run):
    workdir, results = smoke_run
    again = train.train_and_evaluate(_smoke(), workdir)
    for key in ("teacher/acc", "scratch/acc_mean", "kd/acc_mean", "kd/agreement_mean"):
        assert again[key] == results[key]


def test_workdir_with_a_different_model_is_refused(smoke_run):
    workdir, _ = smoke_run
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="does not match.*hidden"):
        train.train_and_evaluate(_smoke(**{"student.model_kwargs.hidden": (16,)}), workdir)


def test_resuming_a_distilled_student_with_another_teacher_is_refused(smoke_run):
    workdir, _ = smoke_run
    other = os.path.join(workdir, "checkpoints", "scratch_seed0")  # an MLP: another teacher
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="kd_seed0.*teacher_sha256"):
        train.train_and_evaluate(_smoke(**{"teacher.init": other}), workdir)


def test_teacher_from_init_path_and_class_mismatch(smoke_run, tmp_path):
    workdir, results = smoke_run
    teacher_dir = os.path.join(workdir, "checkpoints", "teacher")
    out = train.train_and_evaluate(_smoke(**{"teacher.init": teacher_dir}), str(tmp_path / "a"))
    assert out["teacher/acc"] == results["teacher/acc"]
    assert not os.path.exists(tmp_path / "a" / "checkpoints" / "teacher")
    # A teacher trained on another label set (here: 5 classes) is refused before any training.
    bad = tmp_path / "bad_teacher"
    shutil.copytree(teacher_dir, bad)
    metas = [os.path.join(root, "metadata") for root, _, files in os.walk(bad)
             if os.path.basename(root) == "meta" and "metadata" in files]
    assert metas
    for path in metas:
        meta = json.load(open(path))
        meta["num_classes"] = 5
        json.dump(meta, open(path, "w"))
    with pytest.raises(errors.ConfigError, match="predicts 5 classes.*dataset has 10"):
        train.train_and_evaluate(_smoke(**{"teacher.init": str(bad)}), str(tmp_path / "b"))
    with pytest.raises(errors.ConfigError, match="holds no checkpoint"):
        train.train_and_evaluate(_smoke(**{"teacher.init": str(tmp_path / "nothing")}),
                                 str(tmp_path / "c"))


@pytest.mark.parametrize("key,value,match", [
    ("student.model", "resnet9", r"config.student.model='resnet9' is not valid.*mlp"),
    ("teacher.model", "nope", r"config.teacher.model='nope' is not valid"),
    ("data.name", "digitz", r"config.data.name='digitz' is not valid.*sklearn_digits"),
    ("kd.loss", "hintn", r"config.kd.loss='hintn' is not valid.*hinton"),
    ("train.batch_size", 60, r"config.train.batch_size=60 is not divisible by the 8 devices"),
    ("train.on_nonfinite", "ignore", r"config.train.on_nonfinite='ignore'"),
    ("kd.alpha", 1.5, r"config.kd.alpha=1.5"),
    ("train.steps", 0, r"exactly one of config.train.steps and config.train.epochs"),
    ("teacher.epochs", 2.0, r"exactly one of config.teacher.steps and config.teacher.epochs"),
    ("kd.feature.loss", "fitnett", r"config.kd.feature.loss='fitnett' is not valid"),
    ("student.model", "convnet1d", r"config.student.model_kwargs do not fit.*'hidden'.*:student="),
])
def test_bad_config_values_fail_fast_naming_the_key(tmp_path, key, value, match):
    assert jax.device_count() == 8
    t = time.time()
    with pytest.raises(errors.ConfigError, match=match):
        train.train_and_evaluate(_smoke(**{key: value}), str(tmp_path))
    assert time.time() - t < 10  # before any training
    assert not os.path.exists(tmp_path / "checkpoints")


def test_nonfinite_loss_stops_the_run_with_a_message(tmp_path):
    c = _smoke(**{"optimizer.name": "sgd", "optimizer.lr": 1e38})
    with pytest.raises(Exception, match=r"non-finite train/\w+ at step 1\b.*on_nonfinite='skip'"):
        train.train_and_evaluate(c, str(tmp_path))
    c = _smoke(**{"optimizer.name": "sgd", "optimizer.lr": 1e38, "train.on_nonfinite": "skip"})
    out = train.train_and_evaluate(c, str(tmp_path / "skip"))
    rows = read_metrics(str(tmp_path / "skip"))
    assert any(r.get("scratch/seed0/train/skipped_steps", 0) >= 1 for r in rows)
    assert np.isfinite(out["scratch/acc_mean"])


# ----------------------------------------------------------------------------------- the CLI
def _cli(workdir, *extra, env=None):
    return [sys.executable, "-m", "experiments.kd", "--config", "configs/kd/digits.py:smoke",
            "--workdir", str(workdir), "--config.train.progress=false", *extra]


def _env(devices=8):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        + os.environ.get("JAXKD_TESTS_XLA_FLAGS", ""))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_cli_unknown_override_key_and_bad_config_arg(tmp_path):
    r = subprocess.run(_cli(tmp_path, "--config.train.stepz=5"), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "stepz" in r.stderr
    r = subprocess.run([sys.executable, "-m", "experiments.kd", "--config",
                        "configs/kd/digits.py:smoke,sead=3", "--workdir", str(tmp_path)],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "sead" in r.stderr and "seed=0" in r.stderr
    # A config error exits 2 with one line, no traceback.
    r = subprocess.run(_cli(tmp_path, "--config.train.batch_size=60"), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "config.train.batch_size=60" in r.stderr
    # A dataset that is not prepared: one message saying where we looked and how to prepare it.
    r = subprocess.run(_cli(tmp_path, "--config.data.name=cifar10",
                            f"--config.data.data_dir={tmp_path / 'empty'}"), cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "tfds build cifar10" in r.stderr, r.stderr
    assert str(tmp_path / "empty") in r.stderr


def _final_params(workdir):
    """{run: params} restored from each run's last checkpoint, as host numpy arrays."""
    out = {}
    for run in sorted(os.listdir(os.path.join(workdir, "checkpoints"))):
        c = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", run), read_only=True)
        tree = c.restore_raw()
        out[run] = (int(tree["step"]), {k: tree[k] for k in ("params", "batch_stats", "opt_state")})
    return out


def _wait_for(path, needle, proc, timeout=180):
    t = time.time()
    while time.time() - t < timeout:
        if os.path.exists(path) and needle in open(path).read():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError(needle)


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
    """Preempt (SIGTERM) during the teacher, SIGKILL during a student, re-run: same bits."""
    extra = ["--config.teacher.steps=60", "--config.train.steps=60", "--config.train.log_every=2",
             "--config.train.checkpoint_every=8"]
    ref = tmp_path / "ref"
    r = subprocess.run(_cli(ref, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr

    work = tmp_path / "work"
    metrics = str(work / "metrics.jsonl")
    p = subprocess.Popen(_cli(work, *extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(metrics, '"teacher/train/loss"', p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "preempted" in err and "re-run" in err
    saved = ckpt_lib.Checkpointer(str(work / "checkpoints" / "teacher"), read_only=True)
    assert saved.latest_step() is not None and saved.latest_step() < 60

    p = subprocess.Popen(_cli(work, *extra), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(metrics, '"kd/seed0/train/loss": ', p)
    time.sleep(0.3)  # land somewhere between checkpoints (or during one)
    p.kill()
    p.wait()
    kd_dir = work / "checkpoints" / "kd_seed0"
    killed_at = (ckpt_lib.Checkpointer(str(kd_dir), read_only=True).latest_step()
                 if kd_dir.exists() else None)

    r = subprocess.run(_cli(work, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = _final_params(ref), _final_params(work)
    assert a.keys() == b.keys() == {"teacher", "scratch_seed0", "kd_seed0"}
    for run in a:
        assert a[run][0] == b[run][0] == 60, run
        for x, y in zip(jax.tree.leaves(a[run][1]), jax.tree.leaves(b[run][1])):
            np.testing.assert_array_equal(x, y, err_msg=run)
    assert killed_at is None or killed_at < 60
    assert json.load(open(ref / "results.json"))["kd/acc_mean"] == \
        json.load(open(work / "results.json"))["kd/acc_mean"]


@pytest.mark.parametrize("name,image_size,extra", [
    ("cifar10", 0, {"data.augment.random_crop_padding": 4, "data.augment.random_flip": True,
                    "data.augment.mixup_alpha": 0.2}),
    ("imagenet2012", 16, {"data.augment.inception_crop": True}),
])
def test_experiment_reads_standard_tfds_datasets_from_data_dir(tmp_path, name, image_size, extra):
    """The same experiment code on mocked cifar10 / imagenet2012 (no TensorFlow, no download)."""
    import tensorflow_datasets as tfds
    c = _smoke(**{"data.name": name, "data.data_dir": str(tmp_path / "tfds"),
                  "data.image_size": image_size, "teacher.model_kwargs.width": 8,
                  "teacher.steps": 4, "train.steps": 4, "train.eval_every": 0,
                  "train.log_every": 2, "train.batch_size": 16, **extra})
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        results = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert 0.0 <= results["kd/acc_mean"] <= 1.0
    meta = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints" / "kd_seed0"),
                                 read_only=True).read_meta()
    expected = [image_size, image_size, 3] if image_size else [32, 32, 3]
    assert meta["input_shape"] == expected


def test_feature_term_is_checked_before_any_training(tmp_path):
    c = _smoke(**{"kd.feature.loss": "fitnet", "kd.feature.weight": 1.0})
    with pytest.raises(errors.ConfigError, match=r"\[32\].*\[256\].*adapter"):
        train.train_and_evaluate(c, str(tmp_path))
    c = _smoke(**{"kd.feature.loss": "sp", "kd.feature.weight": 1.0,
                  "kd.feature.teacher_layers": "stage9"})
    with pytest.raises(errors.ConfigError, match="no layer 'stage9'; available: features"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_fitnet_feature_distillation_end_to_end_with_resume(tmp_path):
    from configs.kd import fitnet_digits
    c = fitnet_digits.get_config("smoke")
    c.train.progress = False
    first = train.train_and_evaluate(c, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert any("kd/seed0/train/feat" in r for r in rows)
    state = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints" / "kd_seed0"),
                                  read_only=True).restore_raw()
    assert state["aux_params"]["adapter0"]["linear"]["kernel"].shape == (32, 256)
    assert "aux_params" not in ckpt_lib.Checkpointer(
        str(tmp_path / "checkpoints" / "scratch_seed0"), read_only=True).restore_raw()
    again = train.train_and_evaluate(c, str(tmp_path))
    assert again["kd/acc_mean"] == first["kd/acc_mean"]


def test_students_distil_from_a_teacher_cache_on_disk(tmp_path):
    workdir = str(tmp_path / "w")
    cfg = _smoke(**{"teacher.cache.num_samples": 2, "teacher.cache.top_k": 3,
                    "data.augment.random_crop_padding": 1, "train.steps": 200})
    out = train.train_and_evaluate(cfg, workdir)
    manifest = json.load(open(os.path.join(workdir, "teacher_cache", "manifest.json")))
    assert (manifest["num_samples"], manifest["top_k"], manifest["num_examples"]) == (2, 3, 1437)
    assert out["kd/acc_mean"] > 0.6  # it learned from the stored outputs (chance: 0.1)
    meta = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "kd_seed0"),
                                 read_only=True).read_meta(200)
    assert meta["teacher_cache"] == os.path.join(workdir, "teacher_cache")
    # A cache that does not match the config (here: 4 samples asked, 2 stored) is refused.
    with pytest.raises(errors.ConfigError, match="num_samples"):
        train.train_and_evaluate(_smoke(**{"teacher.cache.num_samples": 4,
                                           "teacher.cache.top_k": 3, "train.steps": 200,
                                           "data.augment.random_crop_padding": 1}), workdir)
    # An empty cache directory is refused with the way to rebuild it.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.ConfigError, match="manifest"):
        train.train_and_evaluate(_smoke(**{"teacher.cache.num_samples": 2,
                                           "teacher.cache.dir": str(empty)}), str(tmp_path / "x"))


def test_head_self_distillation_changes_only_the_head(tmp_path):
    workdir = str(tmp_path)
    out = train.train_and_evaluate(_smoke(**{"kd.self_distill_steps": 10}), workdir)
    for key in ("kd_self/acc_mean", "kd_self/acc_std", "kd/acc_mean"):
        assert key in out
    assert "kd_self/agreement_mean" not in out  # it would be agreement with itself

    def params(run, step):
        with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", run),
                                   read_only=True) as c:
            return c.restore_raw(step)["params"]

    stage1, stage2 = params("kd_seed0", 20), params("kd_self_seed0", 10)
    assert set(stage1) == set(stage2) and "head" in stage1
    for name in stage1:
        moved = any(not np.array_equal(a, b) for a, b in
                    zip(jax.tree.leaves(stage1[name]), jax.tree.leaves(stage2[name])))
        assert moved == (name == "head"), name
    meta = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "kd_self_seed0"),
                                 read_only=True).read_meta(10)
    assert meta["teacher_path"].endswith("kd_seed0")


def test_resuming_a_kd_student_under_another_objective_is_refused(tmp_path):
    workdir = str(tmp_path)
    train.train_and_evaluate(_smoke(), workdir)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="distill"):
        train.train_and_evaluate(_smoke(**{"kd.temperature": 2.0}), workdir)
