"""Two local processes (jax.distributed over loopback, gloo) run the quickstart's smoke config."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxkd.core import sharding
from jaxkd.kd import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = ("teacher", "scratch_seed0", "kd_seed0")


def _cmd(workdir):
    # SGD rather than Adam for the comparison: Adam's normalisation turns float reordering noise
    # on near-zero gradients into lr-sized differences, SGD keeps it at rounding level.
    return [sys.executable, "-m", "experiments.kd", "--config", "configs/kd/digits.py:smoke",
            "--workdir", str(workdir), "--config.train.progress=false",
            "--config.optimizer.name=sgd", "--config.optimizer.lr=0.05",
            "--config.teacher.optimizer.name=sgd", "--config.teacher.optimizer.lr=0.05"]


def _restore_all(workdir):
    """Each run's final params, restored in THIS single process onto an 8-device mesh."""
    mesh = sharding.make_mesh(-1, 1)
    out = {}
    for run in RUNS:
        _, t, meta = train.load_teacher(os.path.join(workdir, "checkpoints", run), mesh,
                                        "replicated", 10)
        out[run] = (meta["step"], jax.tree.map(np.asarray, t.variables))
    return out


@pytest.mark.slow
def test_two_processes_agree_and_checkpoint_restores_in_one_process(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("JAXKD_TESTS_XLA_FLAGS", "")  # launch/local.py sets the count
    multi = tmp_path / "multi"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "local.py"), "-n", "2",
         "--devices-per-process", "2", "--", *_cmd(multi)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = re.findall(r"\[p(\d)\] process (\d)/2 results: (.*)", r.stdout)
    assert sorted((a, b) for a, b, _ in lines) == [("0", "0"), ("1", "1")], r.stdout[-2000:]
    assert lines[0][2] == lines[1][2]  # both processes computed the same metrics
    assert (multi / "results.json").exists()

    # The same global batches on one process with 4 devices give the same parameters.
    single = tmp_path / "single"
    r = subprocess.run(_cmd(single), cwd=ROOT, capture_output=True, text=True, timeout=400,
                       env=dict(env, XLA_FLAGS=env["XLA_FLAGS"]
                                + " --xla_force_host_platform_device_count=4"))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _restore_all(multi), _restore_all(single)
    for run in RUNS:
        assert a[run][0] == b[run][0] > 0
        for x, y in zip(jax.tree.leaves(a[run][1]), jax.tree.leaves(b[run][1])):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=run)
