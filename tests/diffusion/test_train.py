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
    from jaxkd.diffusion import tasks  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    teacher_dir = os.path.join(workdir, "teacher")
    config = _smoke(sct_moons)
    dist = tasks.get(config.data.name)
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
    from jaxkd.diffusion import tasks  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    config = _smoke(sct_moons, **{"method": "scd"})  # sCD: the teacher's tangent, resumed too
    dist = tasks.get(config.data.name)
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


def test_a_cosine_student_cannot_change_its_length_on_resume(sct_run, tmp_path):
    import jax  # pylint: disable=g-import-not-at-top

    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import tasks  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    config = _smoke(sct_moons, **{"method": "scd", "student.optimizer.schedule": "cosine",
                                  "student.steps": 3})
    dist = tasks.get(config.data.name)
    net = train.DENOISERS["mlp"](**config.model.kwargs.to_dict())
    sd = results["sigma_d"]
    with metrics.MetricWriter(str(tmp_path)) as writer:
        teacher = train.train_teacher(config, dist, net, sd, os.path.join(workdir, "teacher"),
                                      writer, False)
        once = train.train_student(config, dist, net, teacher, sd, str(tmp_path / "s"), writer,
                                   False)
        for steps in (6, 2):  # extended or shortened: the cosine would change mid-run
            config.student.steps = steps
            with pytest.raises(ckpt_lib.CheckpointMismatchError,
                               match=rf"spans 3 steps; config.student.steps={steps} would"):
                train.train_student(config, dist, net, teacher, sd, str(tmp_path / "s"), writer,
                                    False)
        config.student.steps = 3  # the same length: restored as it was
        again = train.train_student(config, dist, net, teacher, sd, str(tmp_path / "s"), writer,
                                    False)
    jax.tree.map(np.testing.assert_array_equal, once, again)


def test_the_student_ema_is_the_recurrence_over_its_iterates(sct_run, tmp_path):
    import jax  # pylint: disable=g-import-not-at-top

    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import tasks  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    # A large lr, so that the iterates differ by far more than the tolerance (Adam moves each
    # weight by about lr per step). (The first update barely moves the student: it starts as
    # the teacher, with no tangent term yet; hence three.)
    config = _smoke(sct_moons, **{"method": "scd", "student.optimizer.lr": 1e-2})
    dist = tasks.get(config.data.name)
    net = train.DENOISERS["mlp"](**config.model.kwargs.to_dict())
    sd, d = results["sigma_d"], 0.28
    with metrics.MetricWriter(str(tmp_path)) as writer:
        teacher = train.train_teacher(config, dist, net, sd, os.path.join(workdir, "teacher"),
                                      writer, False)
        thetas = [teacher]  # the student starts as the teacher; its weights after 1, 2, 3 steps
        for n in (1, 2, 3):
            config.student.steps = n
            thetas.append(train.train_student(config, dist, net, teacher, sd,
                                              str(tmp_path / "plain"), writer, False))
        config.student.ema = d
        ema = train.train_student(config, dist, net, teacher, sd, str(tmp_path / "ema"), writer,
                                  False)
    expected = thetas[0]
    for k in (1, 2, 3):  # decays 2/11, 3/12 (the warm start), then d itself
        decay = min(d, (1 + k) / (10 + k))
        expected = jax.tree.map(lambda e, t: decay * e + (1 - decay) * t,  # noqa: B023
                                expected, thetas[k])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 ema, expected)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, ema, thetas[3])))


@pytest.mark.parametrize("overrides,match", [
    ({"eval.teacher_steps": (0, 4)}, "config.eval.teacher_steps"),
    ({"eval.student_steps": (1, 3)}, "no '3' entry"),
    ({"eval.student_times": {"2": (2.0,)}}, "student_times"),
    ({"data.name": "spiral"}, "config.data.name"),
    ({"method": "lcm"}, "config.method"),
    ({"eval.sampler": "rk4"}, "config.eval.sampler"),
    ({"method": "sct", "student.tbcm.enabled": True}, "use scd"),
    ({"student.ema": 1.0}, r"config.student.ema=1.0 must be in \[0, 1\)"),
    ({"method": "progressive", "student.ema": 0.9}, "not 'progressive'"),
    ({"student.optimizer.schedule": "linear"}, "config.student.optimizer.schedule='linear'"),
])
def test_bad_configs_name_the_key(overrides, match):
    with pytest.raises(errors.ConfigError, match=match):
        train.check_config(_smoke(scd_ring, **overrides))


@pytest.mark.parametrize("overrides,match", [
    # Guidance needs labels, the null class, and (guided distillation) a scale in its range.
    ({"guidance.scale": 2.0}, "has no classes"),
    ({"teacher.cfg_dropout": 0.1}, "has no classes"),
    ({"data.name": "sklearn_digits", "teacher.cfg_dropout": 0.0, "guidance.scale": 2.0},
     r"never saw the null class \(config.teacher.cfg_dropout=0\)"),
    ({"data.name": "sklearn_digits", "teacher.cfg_dropout": 1.0}, "cfg_dropout=1.0 must be"),
    ({"method": "guided"}, "needs class-conditional data"),
    ({"data.name": "sklearn_digits", "method": "guided", "teacher.cfg_dropout": 0.1,
      "guidance.scale": 4.0}, r"config.guidance.scale=4.0 is outside the range .*\[1.0, 3.0\]"),
    ({"model.kwargs.num_classes": 10}, "set by the driver"),
])
def test_bad_guidance_configs_name_the_key(overrides, match):
    with pytest.raises(errors.ConfigError, match=match):
        train.check_config(_smoke(scd_ring, **overrides))


def test_the_guidance_range_check_refuses_outside_and_accepts_inside():
    train.check_scale_in_range(1.0, 1.0, 3.0)
    train.check_scale_in_range(3.0, 1.0, 3.0)
    for bad in (0.5, 3.5):
        with pytest.raises(errors.ConfigError,
                           match=rf"guidance scale={bad} is outside .*\[1.0, 3.0\]"):
            train.check_scale_in_range(bad, 1.0, 3.0)


def test_plot_titles_name_the_enabled_options():
    assert train.method_label(_smoke(scd_ring)) == "scd"
    assert train.method_label(_smoke(scd_ring, **{"student.tbcm.enabled": True})) == "scd + TBCM"
    assert train.method_label(_smoke(scd_ring, **{"method": "vsd",
                                                  "rcm.snoopi.enabled": True})) == "vsd + SNOOPI"
    assert train.method_label(_smoke(scd_ring, **{"method": "dmd2",
                                                  "rcm.gan.enabled": True})) == "dmd2 + GAN head"
    both = _smoke(scd_ring, **{"method": "dmd2", "rcm.gan.enabled": True,
                               "rcm.snoopi.enabled": True})
    assert train.method_label(both) == "dmd2 + GAN head + SNOOPI"


def test_a_w_conditioned_student_starts_as_its_teacher():
    # Guided distillation's student = the teacher's weights + guidance layers whose last one is
    # zero: at initialisation its output ignores w and equals the teacher's.
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from jaxkd.models.denoisers import MLPDenoiser  # pylint: disable=g-import-not-at-top

    teacher_net = MLPDenoiser(hidden=16, depth=2, num_classes=10, emb_dim=16)
    student_net = MLPDenoiser(hidden=16, depth=2, num_classes=10, emb_dim=16,
                              guidance_input=True)
    x = jax.random.normal(jax.random.key(0), (3, 2))
    t, y = jnp.array([0.3, 0.9, 1.4]), jnp.array([0, 5, 10])
    tp = teacher_net.init(jax.random.key(1), x, t, y)
    sp = student_net.init(jax.random.key(2), x, t, y, jnp.ones(3))
    sp = train._overlay(sp, tp)
    assert "guidance_fc1" in sp["params"]["cond"]  # kept from the student's own init
    out_t = teacher_net.apply(tp, x, t, y)
    for w in (1.0, 2.5):
        np.testing.assert_allclose(student_net.apply(sp, x, t, y, jnp.full(3, w)), out_t,
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guidance_input=False"):
        teacher_net.apply(tp, x, t, y, jnp.ones(3))


def test_unet_group_norm_groups_divide_every_width():
    # Skip concatenations give widths like 144 (= 96 + 48) that 32 groups do not divide.
    from jaxkd.models.denoisers import _groups  # pylint: disable=g-import-not-at-top

    for channels in range(1, 400):
        g = _groups(channels)
        assert channels % g == 0 and 1 <= g <= 32, channels
        assert g == 1 or channels // g >= 4, channels
    assert _groups(144) == 24 and _groups(128) == 32


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits_classifier"))


@pytest.mark.parametrize("method", ["rcm", "guided"])
def test_digits_runs_write_images_labels_and_fd(method, classifier_dir, tmp_path):
    # Class-conditional digits: rCM with SNOOPI's random guidance on its DMD term (a fake score
    # with label dropout), and guided distillation (w-conditioned student, then progressive).
    from configs.diffusion import guided_digits, rcm_digits  # pylint: disable=g-import-not-at-top

    module = {"rcm": rcm_digits, "guided": guided_digits}[method]
    config = _smoke(module, **{"eval.classifier_dir": classifier_dir, "eval.num_samples": 100,
                               "eval.teacher_steps": (1,), "eval.student_steps": (1,),
                               "teacher.steps": 10, "student.steps": 4, "rcm.fake_steps": 1,
                               "rcm.sim_steps": (1,), "progressive.start_steps": 2})
    if method == "rcm":
        config.rcm.snoopi.enabled = True
    results = train.train_and_evaluate(config, str(tmp_path))
    for role in ("teacher", "student"):
        assert np.isfinite(results[f"{role}/steps_1/fd"]) and results[
            f"{role}/steps_1/fd"] > 0, role
        assert 0.0 <= results[f"{role}/steps_1/class_acc"] <= 1.0
    assert 0 < results["real_test/fd"] < 5  # the noise floor, far below any smoke model
    with np.load(os.path.join(str(tmp_path), "samples.npz")) as f:
        samples, labels = f["samples"], f["labels"]
    assert samples.shape == (100, 8, 8, 1) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 16  # the data set's units
    np.testing.assert_array_equal(labels, np.arange(100) % 10)
    assert os.path.getsize(os.path.join(str(tmp_path), "samples.png")) > 0
    if method == "guided":  # stage 1 and the progressive round each checkpointed
        student = os.path.join(str(tmp_path), "checkpoints", "student")
        assert {"guided", "round_1_steps"} <= set(os.listdir(student))


def test_label_dropout_replaces_the_given_fraction_by_the_null_class():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    labels = jnp.arange(20_000) % 10
    out = np.asarray(train.drop_labels(jax.random.key(0), labels, 0.1, 10))
    dropped = out == 10
    assert abs(dropped.mean() - 0.1) < 0.01  # 10% +- 5 binomial standard deviations
    np.testing.assert_array_equal(out[~dropped], np.asarray(labels)[~dropped])
    assert not np.any(np.asarray(train.drop_labels(jax.random.key(0), labels, 0.0, 10)) == 10)


def test_the_teachers_samples_are_cached_beside_it_and_read_back(sct_run, tmp_path):
    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import tasks  # pylint: disable=g-import-not-at-top

    workdir, results = sct_run
    cache = os.path.join(workdir, "teacher_eval_cache")
    files = sorted(os.listdir(cache))
    assert len(files) == 2  # teacher_steps (1, 4)
    config = _smoke(sct_moons, **{"method": "scd"})
    task = tasks.get(config.data.name)
    net = train._build_net(config, task)
    with metrics.MetricWriter(str(tmp_path)) as writer:
        teacher = train.train_teacher(config, task, net, results["sigma_d"],
                                      os.path.join(workdir, "teacher"), writer, False)
    # Replace one cached sample set by a point mass: a later evaluation scores that set.
    path = os.path.join(cache, files[0])
    with np.load(path) as f:
        key = f["key"]
    point = np.zeros((500, 2), np.float32)
    np.savez(path, samples=point, key=key)
    again, sets, _ = train.evaluate(config, task, net, teacher, teacher, results["sigma_d"],
                                    cache_dir=cache)
    n = json.loads(str(key))["steps"]
    np.testing.assert_array_equal(sets[f"teacher_{n}"], point)
    other = 4 if n == 1 else 1
    assert again[f"teacher/steps_{other}/swd"] == pytest.approx(
        results[f"teacher/steps_{other}/swd"], rel=1e-6)
    assert again[f"teacher/steps_{n}/swd"] > 2 * results[f"teacher/steps_{n}/swd"]
