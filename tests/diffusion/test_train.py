"""The diffusion driver: outputs, the teacher's reuse and refusal, resume, bad configs."""

import json
import os

import numpy as np
import pytest

from configs.diffusion import scd_ring, sct_moons
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors
from jaxkd.diffusion import train


def _smoke(module, **overrides):
    c = module.get_config("smoke")
    c.progress = False
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@pytest.fixture(scope="module")
def sct_run(tmp_path_factory):
    # sCD trained at points of the teacher's own trajectories (TBCM); plain sCD runs through the
    # CLI in tests/test_configs.py and sCT's loss (no teacher) is tested in test_scm.py.
    workdir = str(tmp_path_factory.mktemp("tbcm"))
    config = _smoke(sct_moons, **{"method": "scd", "student.tbcm.enabled": True})
    return workdir, train.train_and_evaluate(config, workdir)


def test_outputs_and_result_keys(sct_run):
    workdir, results = sct_run
    for role, steps in (("teacher", (1, 4)), ("student", (1, 2))):
        for n in steps:
            for m in ("swd", "mmd", "logdensity", "mode_coverage"):
                assert np.isfinite(results[f"{role}/steps_{n}/{m}"]), (role, n, m)
            assert 0.0 <= results[f"{role}/steps_{n}/mode_coverage"] <= 1.0
    samples = np.load(os.path.join(workdir, "samples.npz"))["samples"]
    assert samples.shape == (500, 2) and samples.dtype == np.float32
    for name in ("samples.png", "teacher_curves.png", "student_curves.png", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert json.load(open(os.path.join(workdir, "results.json")))["sigma_d"] == pytest.approx(
        results["sigma_d"])
    assert results["sigma_d"] > 0.1  # estimated from the data


def test_a_finished_teacher_is_reused_and_a_different_one_refused(sct_run, tmp_path):
    import jax  # pylint: disable=g-import-not-at-top

    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import toy  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    teacher_dir = os.path.join(workdir, "teacher")
    config = _smoke(sct_moons)
    dist = toy.get(config.data.name)
    net = train.DENOISERS["mlp"](**config.model.kwargs.to_dict())
    with metrics.MetricWriter(str(tmp_path)) as writer:
        once = train.train_teacher(config, dist, net, results["sigma_d"], teacher_dir, writer,
                                   False)
        again = train.train_teacher(config, dist, net, results["sigma_d"], teacher_dir, writer,
                                    False)  # restored: not retrained, the same parameters
        jax.tree.map(np.testing.assert_array_equal, once, again)
        config.teacher.p_mean = 0.5
        with pytest.raises(ckpt_lib.CheckpointMismatchError,
                           match=r"distill\.settings\.p_mean: checkpoint has -1.2, config asks for 0.5"):
            train.train_teacher(config, dist, net, results["sigma_d"], teacher_dir, writer, False)
    # The driver writes the teacher there by default (and reads it back through --config.teacher.dir).
    assert len(os.listdir(teacher_dir)) >= 1


def test_an_interrupted_student_resumes_to_the_same_parameters(sct_run, tmp_path):
    import jax  # pylint: disable=g-import-not-at-top

    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import toy  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    config = _smoke(sct_moons, **{"method": "scd"})  # sCD: the teacher's tangent, resumed too
    dist = toy.get(config.data.name)
    net = train.DENOISERS["mlp"](**config.model.kwargs.to_dict())
    sd = results["sigma_d"]
    with metrics.MetricWriter(str(tmp_path)) as writer:
        teacher = train.train_teacher(config, dist, net, sd, os.path.join(workdir, "teacher"),
                                      writer, False)  # restored, not retrained
        config.student.steps = 4
        train.train_student(config, dist, net, teacher, sd, str(tmp_path / "a"), writer, False)
        config.student.steps = 10  # extended: resumes at step 4
        resumed = train.train_student(config, dist, net, teacher, sd, str(tmp_path / "a"),
                                      writer, False)
        once = train.train_student(config, dist, net, teacher, sd, str(tmp_path / "b"), writer,
                                   False)
    jax.tree.map(np.testing.assert_array_equal, resumed, once)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, once, teacher)))


@pytest.mark.parametrize("overrides,match", [
    ({"eval.teacher_steps": (0, 4)}, "config.eval.teacher_steps"),
    ({"eval.student_steps": (1, 3)}, "no '3' entry"),
    ({"eval.student_times": {"2": (2.0,)}}, "student_times"),
    ({"data.name": "spiral"}, "config.data.name"),
    ({"method": "lcm"}, "config.method"),
    ({"eval.sampler": "rk4"}, "config.eval.sampler"),
    ({"method": "sct", "student.tbcm.enabled": True}, "use scd"),
])
def test_bad_configs_name_the_key(overrides, match):
    with pytest.raises(errors.ConfigError, match=match):
        train.check_config(_smoke(scd_ring, **overrides))
