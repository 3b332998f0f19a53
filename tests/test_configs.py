"""Every config: documented command, strict args, and a smoke run through the real CLI."""

import glob
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    if not os.path.basename(p).startswith("_")  # __init__.py, shared _base.py
)


# A method's MNIST-1D config is its digits twin's method settings (configs/kd/_methods.py) on
# the MNIST-1D base config, whose own smoke runs through the CLI; the twins are checked without
# training (every check train_and_evaluate makes before training), to keep CI within budget.
TWINS = [p for p in CONFIGS if p.endswith("_mnist1d.py")
         and p.replace("_mnist1d.py", "_digits.py") in CONFIGS]
# MTT's digits config runs end to end in-process in tests/dataset_distill/test_train.py (the
# same smoke config); its CLI is the one dm_digits.py's smoke run goes through.
TWINS.append("configs/dataset_distill/mtt_digits.py")
# The relational KD methods' path through the train step is tested in-process, per loss, in
# tests/kd/test_feature_distillation.py (the digits configs differ from fitnet's only there).
TWINS += [f"configs/kd/{m}_digits.py" for m in ("rkd", "pkt", "sp", "cc")]
# DC runs in-process there too; DSA is the same driver path with augmentation on, and FRePo's
# path (a method with a carry) is DC's, its pieces tested in tests/dataset_distill/test_frepo.py.
TWINS += [f"configs/dataset_distill/{m}_digits.py" for m in ("dc", "dsa", "frepo")]
# FTD and AST are MTT with other experts: the AST config runs in-process in test_train.py.
TWINS += [f"configs/dataset_distill/{m}_digits.py" for m in ("ftd", "ast")]
# The diffusion configs differ only in method and data set: scd_ring's smoke runs through
# the CLI; tests/diffusion/test_train.py runs sCT (TBCM), and on digits rCM and guided
# distillation, in-process; the toy data sets are tested in tests/diffusion/test_toy.py.
TWINS += [p for p in CONFIGS if p.startswith("configs/diffusion/")
          and p != "configs/diffusion/scd_ring.py"]
SMOKE = [p for p in CONFIGS if p not in TWINS]


def _module(path):
    return importlib.import_module(path[:-3].replace("/", "."))


def test_there_are_configs():
    assert "configs/kd/digits.py" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_docstring_first_line_is_the_command_with_expected_time(path):
    first = _module(path).__doc__.strip().splitlines()[0]
    family = path.split("/")[1]
    assert first.startswith(f"python -m experiments.{family} --config {path} --workdir "), first
    assert re.search(r"~\s*\d+(\.\d+)?\s*(s|min|h)\b.*CPU", first), first


@pytest.mark.parametrize("path", CONFIGS)
def test_get_config_default_smoke_and_strict_args(path):
    m = _module(path)
    assert m.get_config().to_dict() == m.get_config(None).to_dict()
    m.get_config("smoke")
    with pytest.raises(ValueError, match="nosuchkey"):
        m.get_config("smoke,nosuchkey=1")
    with pytest.raises(ValueError, match="smoke"):
        m.get_config("smoke=false")


@pytest.mark.parametrize("path", TWINS)
def test_configs_without_a_cli_smoke_pass_every_check_before_training(path):
    config = _module(path).get_config("smoke")
    if path.startswith("configs/dataset_distill/"):
        from jaxkd.dataset_distill import train  # pylint: disable=g-import-not-at-top

        train.check_config(config, train.load_real(config.data.name))
        # Every model the run builds, on this data set's shapes.
        data = train.load_real(config.data.name)
        train._model(config.model.name, config.model.kwargs.to_dict(), data, "config.model")
        train._model(config.eval.model.name, config.eval.model.kwargs.to_dict(), data,
                     "config.eval.model")
        return
    if path.startswith("configs/diffusion/"):
        from jaxkd.diffusion import tasks, train  # pylint: disable=g-import-not-at-top

        train.check_config(config)
        train._build_net(config, tasks.get(config.data.name, config.data.kwargs.to_dict()))
        return
    from jaxkd.kd import train  # pylint: disable=g-import-not-at-top

    train.check_config(config)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.startswith("configs/dataset_distill/")])
def test_dataset_distillation_checkpoints_before_the_end_at_every_ipc(path):
    # A run killed without SIGTERM loses at most checkpoint_every iterations: every config
    # must save before its last iteration (DC at ipc 50 once saved only at the end).
    for ipc in (1, 10, 50):
        distill = _module(path).get_config(f"ipc={ipc}").distill
        assert 0 < distill.checkpoint_every < distill.iterations, (path, ipc)


def test_the_check_before_training_catches_a_bad_layer():
    from jaxkd.core import errors  # pylint: disable=g-import-not-at-top
    from jaxkd.kd import train  # pylint: disable=g-import-not-at-top

    config = _module("configs/kd/fitnet_mnist1d.py").get_config("smoke")
    config.kd.feature.teacher_layers = "stage9"
    with pytest.raises(errors.ConfigError, match="no layer 'stage9'"):
        train.check_config(config)


@pytest.mark.parametrize("path", SMOKE)
def test_smoke_run_through_the_cli(path, tmp_path):
    family = path.split("/")[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
               + os.environ.get("JAXKD_TESTS_XLA_FLAGS", ""),
               JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-m", f"experiments.{family}", "--config", f"{path}:smoke",
         "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results and all(isinstance(v, (int, float)) for v in results.values())
    assert re.search(r"^\|.+\|$", r.stdout, re.M), r.stdout[-2000:]  # the results table
