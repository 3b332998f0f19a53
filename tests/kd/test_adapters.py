"""Adapter modules: output shapes, the spatial resize against a NumPy reference, and a FitNets
regressor that learns a linear student->teacher map."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd.kd import adapters
from jaxkd.losses import features


def _normal(seed, shape):
    """Float32 N(0, 1) inputs from NumPy (an eager jax.random call compiles per shape)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(module, *args, **kwargs):
    """Jitted ``module.init`` (eager Flax init dispatches op by op, slowly, on CPU)."""
    return jax.jit(functools.partial(module.init, **kwargs))(*args)


def _cheap_init(module, *args, **kwargs):
    """Variables with ``module.init``'s structure (traced by ``eval_shape``, not compiled: the
    truncated-normal initialisers take ~0.5 s each to compile on CPU) filled from NumPy: params
    ~ N(0, 0.3^2), batch-norm running mean 0 and variance 1."""
    shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.PRNGKey(0),
                            *args)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return jnp.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        return jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(module, variables, *args, **kwargs):
    """Jitted ``module.apply`` with the keyword arguments bound."""
    return jax.jit(functools.partial(module.apply, **kwargs))(variables, *args)


def _np_resize_axis(x, n_out, axis):
    """PyTorch adaptive_avg_pool (shrink) / nearest interpolate (grow) along one axis, loops."""
    n_in = x.shape[axis]
    out = []
    for i in range(n_out):
        if n_out <= n_in:
            start = int(np.floor(i * n_in / n_out))
            end = int(np.ceil((i + 1) * n_in / n_out))
            out.append(np.take(x, range(start, end), axis=axis).mean(axis=axis))
        else:
            out.append(np.take(x, int(np.floor(i * n_in / n_out)), axis=axis))
    return np.stack(out, axis=axis)


@pytest.mark.parametrize("hw,out_hw", [((8, 8), (4, 4)), ((7, 7), (3, 3)), ((4, 4), (8, 8)),
                                       ((3, 5), (7, 2)), ((6, 6), (6, 6))])
def test_resize_spatial_matches_pytorch_semantics(hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3))
    got = jax.jit(adapters.resize_spatial, static_argnums=1)(jnp.asarray(x, jnp.float32), out_hw)
    want = _np_resize_axis(_np_resize_axis(x, out_hw[0], 1), out_hw[1], 2)
    assert got.shape == (2, *out_hw, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_resize_spatial_keeps_dtype():
    x = jnp.asarray(np.arange(2 * 6 * 6 * 2, dtype=np.float32).reshape(2, 6, 6, 2))
    y = adapters.resize_spatial(x.astype(jnp.bfloat16), (2, 2))
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="out_hw"):
        adapters.resize_spatial(x, (0, 2))


def test_needs_adapter():
    assert not adapters.needs_adapter((8, 4, 4, 16), (8, 4, 4, 16))
    assert adapters.needs_adapter((8, 4, 4, 16), (8, 4, 4, 32))
    assert adapters.needs_adapter((8, 8, 8, 16), (8, 4, 4, 16))
    assert adapters.needs_adapter((8, 64), (8, 128))
    assert adapters.needs_adapter((8, 4, 4, 16), (8, 256))
    assert not adapters.needs_adapter((8, 64), (8, 64))
    with pytest.raises(ValueError, match="batch"):
        adapters.needs_adapter((8, 64), (4, 64))


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), None), ((8, 8), (4, 4)), ((4, 4), (8, 8))])
def test_conv_regressor_shapes_and_batch_norm(in_hw, out_hw):
    reg = adapters.ConvRegressor(out_channels=12, out_hw=out_hw)
    x = _normal(0, (3, *in_hw, 5))
    variables = _cheap_init(reg, x, train=False)
    assert set(variables) == {"params", "batch_stats"}
    y, updates = _apply(reg, variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == (3, *(out_hw or in_hw), 12) and y.dtype == jnp.float32
    assert float(y.min()) >= 0.0  # ReLU on by default (RepDistiller's ConvReg)
    assert not np.allclose(updates["batch_stats"]["bn"]["mean"], 0.0)
    y_eval = _apply(reg, variables, x, train=False)
    assert y_eval.shape == y.shape


def test_conv_regressor_linear_variant_and_bf16():
    reg = adapters.ConvRegressor(out_channels=4, use_batch_norm=False, relu=False,
                                 dtype=jnp.bfloat16)
    x = _normal(0, (2, 3, 3, 6))
    variables = _cheap_init(reg, x, train=False)
    assert set(variables) == {"params"}
    y = _apply(reg, variables, x, train=False)
    assert y.dtype == jnp.float32 and y.shape == (2, 3, 3, 4)
    assert float(y.min()) < 0.0
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        reg.init(jax.random.PRNGKey(1), jnp.ones((2, 6)), train=False)


def test_linear_embed_outputs_unit_rows():
    emb = adapters.LinearEmbed(dim=16)
    x = _normal(0, (5, 2, 2, 8))  # flattened to [5, 32]
    variables = _cheap_init(emb, x)
    y = _apply(emb, variables, x)
    assert y.shape == (5, 16) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    assert variables["params"]["linear"]["kernel"].shape == (32, 16)


def test_vid_regressor():
    reg = adapters.VIDRegressor(out_channels=10, mid_channels=7, init_pred_var=5.0, eps=1e-5)
    x = _normal(0, (2, 6))  # embeddings: the 1x1 convs are dense layers
    variables = _init(reg, jax.random.PRNGKey(1), x)
    mean, alpha = _apply(reg, variables, x)
    assert mean.shape == (2, 10) and alpha.shape == (10,)
    np.testing.assert_allclose(jax.nn.softplus(alpha) + 1e-5, 5.0, rtol=1e-5)
    loss = jax.jit(features.vid_loss)(mean, jnp.zeros(mean.shape), alpha)
    np.testing.assert_allclose(loss, 0.5 * (np.log(5.0) + np.mean(np.asarray(mean) ** 2) / 5.0),
                               rtol=1e-5)


@pytest.mark.parametrize("out_hw,want_hw", [(None, (4, 4)), ((2, 2), (2, 2))])
def test_vid_regressor_conv_maps(out_hw, want_hw):
    reg = adapters.VIDRegressor(out_channels=3, out_hw=out_hw)
    x = _normal(0, (2, 4, 4, 5))
    variables = _cheap_init(reg, x)
    assert variables["params"]["conv1"]["kernel"].shape == (1, 1, 5, 3)
    mean, alpha = _apply(reg, variables, x)
    assert mean.shape == (2, *want_hw, 3) and alpha.shape == (3,)


def test_paraphraser_and_translator_shapes():
    t_feat = _normal(0, (2, 4, 4, 8))
    s_feat = _normal(1, (2, 8, 8, 3))
    para = adapters.Paraphraser(out_channels=8, factor_channels=4)
    pv = _cheap_init(para, t_feat, train=False)
    factor, recon = _apply(para, pv, t_feat, train=False)
    assert factor.shape == (2, 4, 4, 4) and recon.shape == t_feat.shape
    np.testing.assert_allclose(
        _apply(para, pv, t_feat, train=False, method=adapters.Paraphraser.encode), factor,
        rtol=1e-6)
    with pytest.raises(ValueError, match="out_channels"):
        _apply(para, pv, jnp.ones((2, 4, 4, 5)), train=False)

    trans = adapters.Translator(factor_channels=4, out_hw=(4, 4))
    tv = _cheap_init(trans, s_feat, train=False)
    s_factor, _ = _apply(trans, tv, s_feat, train=True, mutable=["batch_stats"])
    assert s_factor.shape == factor.shape
    assert np.isfinite(float(jax.jit(features.factor_transfer_loss)(s_factor, factor)))

    bn_para = adapters.Paraphraser(out_channels=8, factor_channels=4, use_batch_norm=True)
    assert "batch_stats" in jax.eval_shape(
        functools.partial(bn_para.init, train=False), jax.random.PRNGKey(2), t_feat)


def test_fitnet_regressor_learns_a_linear_map():
    """A linear 1x1 ConvRegressor fitted by SGD drives fitnet_loss to ~0 when the teacher hint is
    a linear function of the (spatially pooled) student feature."""
    s, w, b = _normal(0, (16, 4, 4, 3)), _normal(1, (3, 6)), _normal(2, (6,))
    pooled = s.reshape(16, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    t = pooled @ w + b  # [16, 2, 2, 6]

    reg = adapters.ConvRegressor(out_channels=6, out_hw=(2, 2), use_batch_norm=False, relu=False)
    params = _init(reg, jax.random.PRNGKey(1), s, train=False)["params"]
    opt = optax.sgd(0.5)

    def loss_fn(p):
        return features.fitnet_loss(reg.apply({"params": p}, s, train=False), t)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, state = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            updates, state = opt.update(g, state, p)
            return (optax.apply_updates(p, updates), state), loss

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=300)
        return p, losses

    params, losses = train(params)
    final = float(jax.jit(loss_fn)(params))
    assert float(losses[0]) > 1.0
    assert final < 1e-4 * float(losses[0]), (float(losses[0]), final)
    np.testing.assert_allclose(params["conv"]["kernel"][0, 0], w, atol=1e-2)
