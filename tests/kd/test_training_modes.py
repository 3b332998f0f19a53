"""Teacher ensembles, momentum (EMA) teachers, the KD warm-up and DeiT's distillation token in
the train step, each against an independent NumPy computation of the loss it must report."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxkd import models
from jaxkd.core import optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import steps as steps_lib

T, ALPHA = 2.0, 0.6


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_hinton(s, t, mask, temperature=T):
    lp, lq = _np_log_softmax(t / temperature), _np_log_softmax(s / temperature)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return temperature ** 2 * (kl * mask).sum() / mask.sum()


def _np_ce(s, labels, mask):
    return -(_np_log_softmax(s)[np.arange(len(labels)), labels] * mask).sum() / mask.sum()


def _setup(student, input_shape, *, teacher=None, distill, ema=0.0):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.5, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    build, _, sh = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, input_shape, ema=ema > 0), jax.random.PRNGKey(0),
        mesh, "replicated")
    step = steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=sh,
                                     teacher=teacher, distill=distill, ema_decay=ema)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, *input_shape)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)}
    return build, step, (lambda b: sharding.to_global_batch(b, mesh)), batch


def _teachers(mesh_devices=1, k=3):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:mesh_devices])
    out = []
    for i in range(k):
        m = models.build("mlp", num_classes=5, hidden=(4 + 2 * i,))  # different architectures
        v = state_lib.init_variables(m, jax.random.PRNGKey(10 + i), (6,))
        out.append((m, v, steps_lib.Teacher.live(m, v, sharding.param_shardings(v, mesh))))
    return out


def _student_logits(student, state, image):
    return np.asarray(student.apply({"params": state["params"]}, image, train=False), np.float64)


@pytest.mark.parametrize("combine", ["mean_probs", "mean_logits", "per_teacher"])
def test_ensemble_targets_and_losses(combine):
    members = _teachers()
    weights = (1.0, 2.0, 1.0)
    teacher = steps_lib.Teacher.ensemble([t for _, _, t in members], weights, combine)
    student = models.build("mlp", num_classes=5, hidden=(16,))
    build, step, glob, batch = _setup(student, (6,), teacher=teacher,
                                      distill=steps_lib.DistillConfig("hinton", ALPHA, T))
    state = build()
    s = _student_logits(student, state, batch["image"])
    ts = [np.asarray(m.apply(v, batch["image"], train=False), np.float64) for m, v, _ in members]
    w = np.asarray(weights) / 4.0
    mask = batch["mask"]
    if combine == "per_teacher":
        kd = sum(wk * _np_hinton(s, t, mask) for wk, t in zip(w, ts))
        target = np.log(sum(wk * np.exp(_np_log_softmax(t)) for wk, t in zip(w, ts)))
    elif combine == "mean_probs":
        target = np.log(sum(wk * np.exp(_np_log_softmax(t)) for wk, t in zip(w, ts)))
        kd = _np_hinton(s, target, mask)
    else:
        target = sum(wk * t for wk, t in zip(w, ts))
        kd = _np_hinton(s, target, mask)
    _, metrics = step(state, glob(batch))
    np.testing.assert_allclose(metrics["kd"], kd, rtol=2e-5)
    ce = _np_ce(s, batch["label"], mask)
    np.testing.assert_allclose(metrics["loss"], (1 - ALPHA) * ce + ALPHA * kd, rtol=2e-5)
    # Agreement is measured against the ensemble's prediction.
    pred, t_pred = s.argmax(-1), target.argmax(-1)
    np.testing.assert_allclose(metrics["agreement"], ((pred == t_pred) * mask).sum() / mask.sum())


def test_ensemble_rejects_bad_weights():
    members = [t for _, _, t in _teachers(k=2)]
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        steps_lib.Teacher.ensemble(members, (1.0,))
    with pytest.raises(ValueError, match="combine"):
        steps_lib.Teacher.ensemble(members, None, "vote")


def test_ema_teacher_is_the_students_moving_average():
    student = models.build("mlp", num_classes=5, hidden=(16,))
    build, step, glob, batch = _setup(
        student, (6,), distill=steps_lib.DistillConfig("hinton", ALPHA, T, source="ema"), ema=0.5)
    state = build()
    # Step 1: the EMA equals the params, so the distillation term is 0.
    state, m1 = step(state, glob(batch))
    np.testing.assert_allclose(m1["kd"], 0.0, atol=1e-6)
    # Step 2: the target is the EMA network, which now differs from the student.
    s = _student_logits(student, state, batch["image"])
    t = np.asarray(student.apply({"params": state["ema_params"]}, batch["image"], train=False),
                   np.float64)
    assert np.abs(s - t).max() > 1e-3
    _, m2 = step(state, glob(batch))
    # float32 KL between two close networks cancels: ~1e-7 absolute rounding (CPU-dependent).
    np.testing.assert_allclose(m2["kd"], _np_hinton(s, t, batch["mask"]), rtol=2e-5, atol=1e-6)


def test_ema_teacher_needs_momentum():
    student = models.build("mlp", num_classes=5, hidden=(16,))
    with pytest.raises(ValueError, match="ema_decay > 0"):
        _setup(student, (6,), distill=steps_lib.DistillConfig("hinton", ALPHA, T, source="ema"))


def test_warmup_ramps_the_distillation_weight():
    (_, _, teacher), = _teachers(k=1)
    student = models.build("mlp", num_classes=5, hidden=(16,))
    build, step, glob, batch = _setup(
        student, (6,), teacher=teacher,
        distill=steps_lib.DistillConfig("hinton", ALPHA, T, warmup_steps=4))
    state = build()
    for k in range(6):
        state, m = step(state, glob(batch))
        ramp = min(1.0, (k + 1) / 4)
        np.testing.assert_allclose(m["loss"], (1 - ALPHA) * m["ce"] + ALPHA * ramp * m["kd"],
                                   rtol=1e-5)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_deit_distillation_token_learns_from_the_teacher(kind):
    image_shape = (8, 8, 1)
    tmodel = models.build("mlp", num_classes=5, hidden=(8,))
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(3), image_shape)
    teacher = steps_lib.Teacher.live(tmodel, t_vars, sharding.param_shardings(t_vars, mesh))
    student = models.build("vit_tiny", num_classes=5, patch_size=4, distill_token=True)
    build, step, glob, batch = _setup(
        student, image_shape, teacher=teacher,
        distill=steps_lib.DistillConfig("deit", ALPHA, T, params=(("kind", kind),)))
    state = build()
    cls, inter = student.apply({"params": state["params"]}, batch["image"], train=True,
                               mutable=["intermediates"])
    cls = np.asarray(cls, np.float64)
    dist = np.asarray(inter["intermediates"]["dist_logits"][0], np.float64)
    t = np.asarray(tmodel.apply(t_vars, batch["image"], train=False), np.float64)
    mask = batch["mask"]
    if kind == "hard":
        kd = _np_ce(dist, t.argmax(-1), mask)
    else:
        kd = _np_hinton(dist, t, mask)
    _, m = step(state, glob(batch))
    np.testing.assert_allclose(m["kd"], kd, rtol=1e-4)
    np.testing.assert_allclose(m["ce"], _np_ce(cls, batch["label"], mask), rtol=1e-4)


def test_influence_weights_match_naive_per_example_head_gradients():
    (_, _, teacher), = _teachers(k=1)
    student = models.build("mlp", num_classes=5, hidden=(16,))
    distill = steps_lib.DistillConfig("hinton", ALPHA, T, influence_scale=1.5)
    build, step, glob, batch = _setup(student, (6,), teacher=teacher, distill=distill)
    state = build()
    params = state["params"]
    t = np.asarray(teacher.fn(teacher.variables, batch), np.float64)
    mask = batch["mask"]

    # Naive: per-example gradients of the head's weights and bias by autodiff, one example at a
    # time, and the gradient of the batch CE; then standardise and squash in NumPy.
    def head_grad(loss_of_logits):
        def f(head):
            p = dict(params, head=head)
            return loss_of_logits(student.apply({"params": p}, batch["image"], train=False))
        g = jax.grad(f)(params["head"])
        return np.concatenate([np.ravel(g["kernel"]), np.ravel(g["bias"])])

    import jax.numpy as jnp
    from jaxkd import losses
    per = np.stack([head_grad(lambda z, i=i: losses.hinton_kd_loss(
        z[i:i + 1], jnp.asarray(t[i:i + 1], jnp.float32), temperature=T)) for i in range(8)])
    ref = head_grad(lambda z: losses.softmax_cross_entropy(z, batch["label"], mask=mask))
    scores = per @ ref
    m = mask.astype(bool)
    zs = (scores - scores[m].mean()) / scores[m].std()
    expected = np.where(m, 1 / (1 + np.exp(-1.5 * zs)), 0.0)

    logits, inter = student.apply({"params": params}, batch["image"], train=False,
                                  mutable=["intermediates"])
    got = steps_lib.influence_kd_weights(
        logits, inter["intermediates"]["features"][0],
        lambda z: losses.hinton_kd_loss(z, t.astype(np.float32), temperature=T, mask=mask),
        batch, 1.5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

    # The step's distillation term is the weighted mean with those weights.
    s = _student_logits(student, state, batch["image"])
    lp, lq = _np_log_softmax(t / T), _np_log_softmax(s / T)
    kl = T ** 2 * (np.exp(lp) * (lp - lq)).sum(-1)
    _, metrics = step(state, glob(batch))
    np.testing.assert_allclose(metrics["kd"], (kl * expected).sum() / expected.sum(), rtol=1e-4)
    np.testing.assert_allclose(metrics["kd_weight_mean"], expected.sum() / mask.sum(), rtol=1e-4)


def test_dino_loss_and_centre_with_an_ema_teacher():
    student = models.build("mlp", num_classes=5, hidden=(16,))
    params = (("center_momentum", 0.8), ("student_temp", 0.2), ("teacher_temp", 0.05))
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.5, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    import jax.numpy as jnp
    base = state_lib.make_init_fn(student, tx, (6,), ema=True)
    init = lambda r: dict(base(r), kd_center=jnp.zeros((5,), jnp.float32))  # noqa: E731
    build, _, sh = state_lib.create_sharded(init, jax.random.PRNGKey(0), mesh, "replicated")
    step = steps_lib.make_train_step(
        student, tx, mesh=mesh, state_shardings=sh, ema_decay=0.5,
        distill=steps_lib.DistillConfig("dino", ALPHA, 1.0, params=params, source="ema"))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)}
    glob = lambda b: sharding.to_global_batch(b, mesh)  # noqa: E731
    state = build()
    state, _ = step(state, glob(batch))  # moves the EMA away from the params
    s = _student_logits(student, state, batch["image"])
    t = np.asarray(student.apply({"params": state["ema_params"]}, batch["image"], train=False),
                   np.float64)
    c = np.asarray(state["kd_center"], np.float64)
    mask = batch["mask"]
    q = np.exp(_np_log_softmax((t - c) / 0.05))
    ce = -(q * _np_log_softmax(s / 0.2)).sum(-1)
    new_state, m = step(state, glob(batch))
    np.testing.assert_allclose(m["kd"], (ce * mask).sum() / mask.sum(), rtol=1e-4)
    expected_c = 0.8 * c + 0.2 * (t * mask[:, None]).sum(0) / mask.sum()
    np.testing.assert_allclose(new_state["kd_center"], expected_c, rtol=1e-5, atol=1e-6)
