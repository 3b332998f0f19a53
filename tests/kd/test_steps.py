"""KD train/eval steps: loss composition, EMA, cached teacher == live teacher, mixup CE."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxkd import models
from jaxkd.core import optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import steps as steps_lib


def _setup(ema=0.0, teacher_kind="live", alpha=0.7, temperature=3.0):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    student = models.build("mlp", num_classes=5, hidden=(16,))
    tmodel = models.build("mlp", num_classes=5, hidden=(8,))
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    build, _, sh = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, (6,), ema=ema > 0), jax.random.PRNGKey(0), mesh,
        "replicated")
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(1), (6,))
    t_sh = sharding.param_shardings(t_vars, mesh)
    live = steps_lib.Teacher.live(tmodel, t_vars, t_sh)
    teacher = live if teacher_kind == "live" else steps_lib.Teacher.cached()
    step = steps_lib.make_train_step(
        student, tx, mesh=mesh, state_shardings=sh, teacher=teacher,
        distill=steps_lib.DistillConfig("hinton", alpha, temperature), ema_decay=ema)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}
    batch["teacher_logits"] = np.asarray(tmodel.apply(t_vars, batch["image"], train=False))
    return student, build, step, batch, mesh, live


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kd_loss_is_weighted_ce_plus_t2_kl_over_masked_examples():
    student, build, step, batch, mesh, _ = _setup()
    state = build()
    s = np.asarray(student.apply({"params": state["params"]}, batch["image"], train=False),
                   np.float64)
    t = batch["teacher_logits"].astype(np.float64)
    m = batch["mask"].astype(bool)
    ce = -_np_log_softmax(s)[np.arange(8), batch["label"]][m].mean()
    lp, lq = _np_log_softmax(t / 3.0), _np_log_softmax(s / 3.0)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)[m].mean()
    _, metrics = step(state, sharding.to_global_batch(batch, mesh))
    np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["kd"], 9.0 * kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], 0.3 * ce + 0.7 * 9.0 * kl, rtol=1e-5)


def test_cached_teacher_gives_the_same_training_as_a_live_one():
    _, build, live_step, batch, mesh, _ = _setup(teacher_kind="live")
    _, build2, cached_step, _, _, _ = _setup(teacher_kind="cached")
    a, b = build(), build2()
    for _ in range(3):
        a, _ = live_step(a, sharding.to_global_batch(batch, mesh))
        b, _ = cached_step(b, sharding.to_global_batch(batch, mesh))
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_ema_follows_its_recurrence_and_teacher_is_untouched():
    _, build, step, batch, mesh, live = _setup(ema=0.9)
    state = build()
    p0 = jax.tree.map(np.asarray, state["params"])
    t_before = jax.tree.map(np.asarray, live.variables)
    state, _ = step(state, sharding.to_global_batch(batch, mesh))
    p1 = jax.tree.map(np.asarray, state["params"])
    expected = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, p0, p1)
    for x, y in zip(jax.tree.leaves(state["ema_params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(live.variables), jax.tree.leaves(t_before)):
        np.testing.assert_array_equal(x, y)
    assert int(state["step"]) == 1


def test_mixup_cross_entropy_is_the_lam_weighted_pair():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    batch = {"label": jnp.array([0, 1]), "label2": jnp.array([2, 0]),
             "lam": jnp.array([0.25, 1.0]), "mask": jnp.ones(2)}
    lp = _np_log_softmax(np.asarray(logits, np.float64))
    expected = np.mean([0.25 * -lp[0, 0] + 0.75 * -lp[0, 2], -lp[1, 1]])
    np.testing.assert_allclose(steps_lib._ce(logits, batch), expected, rtol=1e-6)


def test_eval_step_counts_only_masked_examples():
    student, build, _, batch, mesh, live = _setup()
    state = build()
    ev = steps_lib.make_eval_step(steps_lib.student_logits_fn(student), mesh=mesh,
                                  shardings=jax.tree.map(lambda x: x.sharding, state),
                                  teacher=live)
    out = steps_lib.summarize_eval([ev(state, sharding.to_global_batch(batch, mesh))])
    s = np.asarray(student.apply({"params": state["params"]}, batch["image"], train=False))
    m = batch["mask"].astype(bool)
    assert out["count"] == 6
    np.testing.assert_allclose(out["acc"], (s.argmax(-1) == batch["label"])[m].mean())
    np.testing.assert_allclose(
        out["agreement"], (s.argmax(-1) == batch["teacher_logits"].argmax(-1))[m].mean())
