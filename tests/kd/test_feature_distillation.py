"""Feature distillation by layer name: capture, adapters, checks, and a step that trains them."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxkd import losses, models
from jaxkd.core import errors, optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import features as features_lib
from jaxkd.kd import steps as steps_lib


def _shapes(model, input_shape):
    v = jax.eval_shape(lambda r: state_lib.init_variables(model, r, input_shape),
                       jax.random.PRNGKey(0))
    return features_lib.intermediate_shapes(model, v, input_shape)


def test_intermediate_shapes_read_the_sown_layers():
    conv = models.build("convnet", num_classes=10, width=16, depth=2, norm="batch")
    shapes = _shapes(conv, (8, 8, 1))
    assert shapes["stage1"] == (4, 4, 16) and shapes["stage2"] == (2, 2, 16)
    assert shapes["features"] == (64,)
    assert _shapes(models.build("mlp", num_classes=10, hidden=(32,)), (8, 8, 1)) == {
        "hidden1": (32,), "features": (32,)}


def test_bad_layer_names_and_shapes_give_one_clear_message():
    s = {"features": (32,), "hidden1": (32,)}
    t = {"features": (256,), "stage1": (4, 4, 64)}
    term = features_lib.FeatureTerm("fitnet", ("featurez",), ("features",))
    with pytest.raises(errors.ConfigError, match="no layer 'featurez'; available: features"):
        features_lib.check_layers(term, s, t)
    term = features_lib.FeatureTerm("fitnet", ("features",), ("features",))
    with pytest.raises(errors.ConfigError, match=r"\[32\].*\[256\].*adapter"):
        features_lib.check_layers(term, s, t)
    term = features_lib.FeatureTerm("fitnet", ("features",), ("features", "stage1"))
    with pytest.raises(errors.ConfigError, match="same number"):
        features_lib.check_layers(term, s, t)
    term = features_lib.FeatureTerm("fitnet", ("features",), ("stage1",), adapter="conv")
    with pytest.raises(errors.ConfigError, match="needs \\[H, W, C\\] maps"):
        features_lib.check_layers(term, s, t)
    term = features_lib.FeatureTerm("at", ("features",), ("features",))
    init, apply = features_lib.make_adapters(term, s, t)
    with pytest.raises(errors.ConfigError, match="does not fit.*rank 4"):
        features_lib.check_loss_accepts(term, s, t, init, apply)
    with pytest.raises(errors.ConfigError, match="comma-separated"):
        features_lib.parse_layers("stage1,", "config.kd.feature.student_layers")
    assert features_lib.parse_layers("stage1, stage2", "k") == ("stage1", "stage2")


@pytest.mark.parametrize("adapter", ["linear", "conv"])
def test_adapters_map_student_features_to_the_teacher_shape(adapter):
    s = {"stage1": (4, 4, 8)}
    t = {"stage1": (2, 2, 16)}
    term = features_lib.FeatureTerm("fitnet", ("stage1",), ("stage1",), adapter=adapter)
    features_lib.check_layers(term, s, t)
    init, apply = features_lib.make_adapters(term, s, t)
    out = apply(init(jax.random.PRNGKey(0)), [jnp.ones((3, 4, 4, 8))])
    assert out[0].shape == (3, 2, 2, 16)


def _fitnet_setup(loss="fitnet", adapter="linear"):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    student = models.build("mlp", num_classes=4, hidden=(8,))
    tmodel = models.build("mlp", num_classes=4, hidden=(12,))
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    s_shapes, t_shapes = _shapes(student, (5,)), _shapes(tmodel, (5,))
    term = features_lib.FeatureTerm(loss, ("features",), ("features",), weight=2.0,
                                    adapter=adapter)
    aux_init, adapter_apply = features_lib.make_adapters(term, s_shapes, t_shapes)
    build, _, sh = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, (5,), ema=False, aux_init=aux_init),
        jax.random.PRNGKey(0), mesh, "replicated")
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(1), (5,))
    teacher = steps_lib.Teacher.live(tmodel, t_vars, sharding.param_shardings(t_vars, mesh))
    step = steps_lib.make_train_step(
        student, tx, mesh=mesh, state_shardings=sh, teacher=teacher,
        distill=steps_lib.DistillConfig("hinton", 0.0, 4.0), feature=term,
        adapter_apply=adapter_apply)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(6, 5)).astype(np.float32),
             "label": rng.integers(0, 4, 6).astype(np.int32), "mask": np.ones(6, np.float32)}
    return student, tmodel, t_vars, build, step, batch, mesh


def test_feature_step_loss_is_ce_plus_weighted_fitnet_and_trains_the_adapter():
    student, tmodel, t_vars, build, step, batch, mesh = _fitnet_setup()
    state = build()
    assert set(state["aux_params"]) == {"adapter0"}
    # Independent recomputation of the loss with NumPy.
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), state["params"])
    a = jax.tree.map(lambda x: np.asarray(x, np.float64), state["aux_params"]["adapter0"])
    tp = jax.tree.map(lambda x: np.asarray(x, np.float64), t_vars["params"])
    x = batch["image"].astype(np.float64)
    h = np.maximum(x @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0)
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
    z = logits - logits.max(-1, keepdims=True)
    ce = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(6), batch["label"]].mean()
    th = np.maximum(x @ tp["dense1"]["kernel"] + tp["dense1"]["bias"], 0)
    proj = h @ a["linear"]["kernel"] + a["linear"]["bias"]
    fit = ((proj - th) ** 2).mean()
    new, metrics = step(state, sharding.to_global_batch(batch, mesh))
    np.testing.assert_allclose(metrics["feat"], fit, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], ce + 2.0 * fit, rtol=1e-5)
    after = jax.tree.map(np.asarray, new["aux_params"]["adapter0"])
    assert not np.allclose(after["linear"]["kernel"], a["linear"]["kernel"])  # adapter trained


@pytest.mark.parametrize("loss", ["rkd", "pkt", "sp", "cc"])
def test_relational_terms_in_the_step_are_the_pure_losses_on_the_two_embeddings(loss):
    # The relational methods' digits configs are checked without a CLI smoke run
    # (tests/test_configs.py); this is their path through the train step: the embeddings of
    # student (8 wide) and teacher (12 wide) compared by the pure loss, no adapter.
    student, tmodel, t_vars, build, step, batch, mesh = _fitnet_setup(loss, "none")
    state = build()
    p = jax.tree.map(np.asarray, state["params"])
    tp = jax.tree.map(np.asarray, t_vars["params"])
    x = batch["image"]
    h = np.maximum(x @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0)
    th = np.maximum(x @ tp["dense1"]["kernel"] + tp["dense1"]["bias"], 0)
    want = float(losses.get_feature_loss(loss)(jnp.asarray(h), jnp.asarray(th),
                                               mask=jnp.asarray(batch["mask"])))
    new, metrics = step(state, sharding.to_global_batch(batch, mesh))
    np.testing.assert_allclose(metrics["feat"], want, rtol=1e-4, atol=1e-7)
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(new["params"]["dense1"]["kernel"]), p["dense1"]["kernel"])


def test_feature_losses_registry_and_unknown_name():
    assert {"fitnet", "at", "rkd", "pkt", "sp", "ickd", "cc"} <= set(losses.FEATURE_LOSSES)
    with pytest.raises(ValueError, match="valid feature losses: at, cc"):
        losses.get_feature_loss("fitnett")


def test_vid_term_is_the_gaussian_nll_under_its_regressor():
    # Student conv map [4, 4, 8] -> teacher map [2, 2, 16]: the VID regressor resizes, predicts
    # the mean, and carries a per-channel variance; the term equals the NumPy NLL formula.
    s_shapes, t_shapes = {"stage1": (4, 4, 8)}, {"stage1": (2, 2, 16)}
    term = features_lib.FeatureTerm("vid", ("stage1",), ("stage1",), adapter="vid",
                                    params=(("eps", 1e-5), ("init_pred_var", 3.0)))
    features_lib.check_layers(term, s_shapes, t_shapes)
    init, apply = features_lib.make_adapters(term, s_shapes, t_shapes)
    aux = init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    t = rng.normal(size=(3, 2, 2, 16)).astype(np.float32)
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    (mean, alpha), = apply(aux, [jnp.asarray(s)])
    assert mean.shape == (3, 2, 2, 16) and alpha.shape == (16,)
    got = features_lib.feature_loss(term, [(mean, alpha)], [jnp.asarray(t)], jnp.asarray(mask))
    var = np.log1p(np.exp(np.asarray(alpha, np.float64))) + 1e-5
    np.testing.assert_allclose(var, 3.0, rtol=1e-5)  # the initial variance
    nll = 0.5 * (np.log(var) + (t - np.asarray(mean, np.float64)) ** 2 / var)
    per_example = nll.reshape(3, -1).mean(1)
    np.testing.assert_allclose(got, (per_example * mask).sum() / mask.sum(), rtol=1e-5)
    # VID's loss and adapter go together.
    with pytest.raises(errors.ConfigError, match="go together"):
        features_lib.check_layers(features_lib.FeatureTerm("vid", ("stage1",), ("stage1",),
                                                           adapter="conv"), s_shapes, t_shapes)
