"""Tests for the model registry: every entry builds and runs, plus architecture checks.

These run eagerly on CPU, where every new array shape compiles its own small XLA program, so
models are built and initialised once per configuration (`_built`) and the tests reuse a few
configurations wherever the check allows.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxkd.models import MODELS, build

NUM_CLASSES = 10
BN_MODELS = {name for name in MODELS if name.startswith("resnet")}


def _input_shape(name: str) -> tuple[int, int, int, int]:
    """A small input each registry entry accepts (batch 2)."""
    if name.startswith("resnet"):
        return (2, 32, 32, 3)
    if name.startswith("vit"):
        return (2, 16, 16, 3)  # 4x4 patches of size 4.
    if name == "convnet1d":
        return (2, 40, 1)  # an MNIST-1D signal.
    return (2, 8, 8, 1)  # mlp, convnet (depth 3: 8 -> 4 -> 2 -> 1).


def _key(seed: int) -> jax.Array:
    # The "rbg" PRNG compiles several times faster than threefry on CPU, and each new parameter
    # shape compiles its own initialiser.
    return jax.random.key(seed, impl="rbg")


def _images(shape, seed=0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.cache
def _built(name: str, shape: tuple[int, ...] | None = None, **kwargs):
    """(model, variables, x) for `build(name, num_classes=10, **kwargs)`, initialised on x."""
    model = build(name, num_classes=NUM_CLASSES, **kwargs)
    x = _images(shape or _input_shape(name))
    return model, model.init(_key(1), x, train=False), x


def _param_shapes(model, shape):
    """The `params` tree as ShapeDtypeStructs, without running any computation."""
    init = lambda rng, x: model.init(rng, x, train=False)  # noqa: E731
    return jax.eval_shape(init, _key(0), jnp.zeros(shape))["params"]


def _param_count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _sown_shapes(model, variables, x) -> dict[str, tuple[int, ...]]:
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    return {k: v[0].shape for k, v in state["intermediates"].items()}


# ---------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_entry_builds_and_runs(name):
    model, variables, x = _built(name)
    has_bn = name in BN_MODELS
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    batch = x.shape[0]

    # Train mode, intermediates read through `sow` with mutable=[...].
    mutable = ["intermediates"] + (["batch_stats"] if has_bn else [])
    logits, state = model.apply(variables, x, train=True, mutable=mutable)
    chex.assert_shape(logits, (batch, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    features = state["intermediates"]["features"]
    assert isinstance(features, tuple) and len(features) == 1
    assert features[0].ndim == 2 and features[0].shape[0] == batch

    # Eval mode, intermediates read through capture_intermediates=True; nothing else mutated.
    logits, state = model.apply(variables, x, train=False, capture_intermediates=True)
    chex.assert_shape(logits, (batch, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    assert set(state) == {"intermediates"}
    assert state["intermediates"]["features"][0].shape == features[0].shape
    chex.assert_trees_all_close(state["intermediates"]["__call__"][0], logits)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build("resnet9", num_classes=NUM_CLASSES)
    msg = str(err.value)
    assert "'resnet9'" in msg
    assert ", ".join(sorted(MODELS)) in msg


def test_unknown_kwarg_is_named():
    with pytest.raises(TypeError, match="'bogus'"):
        build("resnet20", num_classes=NUM_CLASSES, bogus=1)
    with pytest.raises(TypeError, match="'bogus'"):
        build("mlp", num_classes=NUM_CLASSES, bogus=1)
    # A named variant's architecture is fixed; the generic entries expose theirs.
    with pytest.raises(TypeError, match="'widths'"):
        build("resnet20", num_classes=NUM_CLASSES, widths=(8, 8, 8))
    with pytest.raises(TypeError, match="'depth'"):
        build("vit_tiny", num_classes=NUM_CLASSES, depth=2)
    assert build("vit", num_classes=NUM_CLASSES, depth=2).depth == 2


def test_sequence_fields_from_configs_become_tuples():
    # Config files hand over lists; modules must stay hashable (static jit arguments).
    model = build("mlp", num_classes=NUM_CLASSES, hidden=[32, 16])
    assert model.hidden == (32, 16)
    assert hash(model) == hash(build("mlp", num_classes=NUM_CLASSES, hidden=(32, 16)))


@pytest.mark.parametrize(
    "name, kwargs, bad",
    [
        ("convnet", {"norm": "group"}, "'group'"),
        ("mlp", {"activation": "swishy"}, "'swishy'"),
        ("vit", {"hidden": 10, "heads": 3}, "heads=3"),
    ],
)
def test_bad_field_value_is_named(name, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        build(name, num_classes=NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet8", "vit"])
def test_bfloat16_compute_returns_float32_logits(name):
    model = build(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    _, variables, x = _built(name)  # The compute dtype does not change the parameters.
    shapes = _param_shapes(model, x.shape)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables["params"])
    logits = model.apply(variables, x, train=False)
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    reference = _built(name)[0].apply(variables, x, train=False)
    np.testing.assert_allclose(logits, reference, atol=0.1 * float(jnp.abs(reference).max()) + 0.05)


# ---------------------------------------------------------------------------------------------
# Parameter counts, against a formula written out from the RepDistiller architecture.


def _cifar_resnet_params(depth, stem, widths, num_classes) -> int:
    """Parameters (weights + biases, BN scale + bias; no running stats) of RepDistiller's ResNet."""
    n = (depth - 2) // 6
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731  (bias-free)
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, stem, 3) + bn(stem)
    cin = stem
    for stage, cout in enumerate(widths):
        for block in range(n):
            total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            stride = 2 if stage > 0 and block == 0 else 1
            if stride != 1 or cin != cout:
                total += conv(cin, cout, 1) + bn(cout)  # Projection shortcut.
            cin = cout
    return total + cin * num_classes + num_classes


@pytest.mark.parametrize(
    "name, depth, stem, widths, num_classes, published",
    [
        # Published sizes: resnet20 0.27M (He et al., CIFAR-10); resnet8x4 1.23M and
        # resnet32x4 7.43M (CRD / RepDistiller tables, CIFAR-100).
        ("resnet20", 20, 16, (16, 32, 64), 10, 0.27e6),
        ("resnet8x4", 8, 32, (64, 128, 256), 100, 1.23e6),
        ("resnet32x4", 32, 32, (64, 128, 256), 100, 7.43e6),
    ],
)
def test_resnet_param_counts(name, depth, stem, widths, num_classes, published):
    count = _param_count(_param_shapes(build(name, num_classes=num_classes), (1, 32, 32, 3)))
    assert count == _cifar_resnet_params(depth, stem, widths, num_classes)
    assert abs(count - published) / published < 0.01, count


def test_resnet18_param_count():
    # RepDistiller's CIFAR ResNet18 (resnetv2.py) with 100 classes: 11.22M.
    count = _param_count(_param_shapes(build("resnet18", num_classes=100), (1, 32, 32, 3)))
    assert abs(count - 11.22e6) / 11.22e6 < 0.01, count


def test_resnet_sown_shapes():
    model, variables, x = _built("resnet20")
    assert _sown_shapes(model, variables, x) == {
        "stem": (2, 32, 32, 16),
        "stage1": (2, 32, 32, 16),
        "stage1_preact": (2, 32, 32, 16),
        "stage2": (2, 16, 16, 32),
        "stage2_preact": (2, 16, 16, 32),
        "stage3": (2, 8, 8, 64),
        "stage3_preact": (2, 8, 8, 64),
        "features": (2, 64),
    }
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    inter = {k: v[0] for k, v in state["intermediates"].items()}
    chex.assert_trees_all_close(inter["stage3"], jax.nn.relu(inter["stage3_preact"]))
    chex.assert_trees_all_close(inter["features"], inter["stage3"].mean(axis=(1, 2)), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize("name, kwargs", [("resnet8", {}), ("convnet", {"norm": "batch"})])
def test_batch_stats_update_in_train_only(name, kwargs):
    model, variables, x = _built(name, **kwargs)
    x = 3.0 * x + 1.0  # Batch statistics far from the initial (mean 0, var 1).
    train_logits, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_logits, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(train_state["batch_stats"])
    assert len(old) == len(new) > 0
    assert all(not np.allclose(a, b) for a, b in zip(old, new))
    chex.assert_trees_all_equal(eval_state["batch_stats"], variables["batch_stats"])
    assert not np.allclose(train_logits, eval_logits)  # Eval uses the running averages.


def _captured(state, module: str) -> np.ndarray:
    return np.asarray(state["intermediates"][module]["__call__"][0], np.float64)


@pytest.mark.parametrize(
    "norm, axes",
    [
        ("instance", (1, 2)),  # Per sample, per channel.
        ("layer", (1, 2, 3)),  # Per sample.
        ("batch", (0, 1, 2)),  # Per channel, over the batch (train mode).
    ],
)
def test_convnet_norms_match_numpy(norm, axes):
    model, variables, x = _built("convnet", norm=norm)
    _, state = model.apply(
        variables, x, train=True, capture_intermediates=True, mutable=["batch_stats"]
    )
    for i in (1, 2, 3):
        conv, normed = _captured(state, f"conv{i}"), _captured(state, f"norm{i}")
        # Default-initialised affine (scale 1, bias 0): the output is the bare normalisation.
        mean = conv.mean(axis=axes, keepdims=True)
        var = conv.var(axis=axes, keepdims=True)
        if i < 3:  # Non-trivial statistics (at 1x1, instance/layer norm outputs are all zero).
            assert var.min() > 1e-3
        np.testing.assert_allclose(normed, (conv - mean) / np.sqrt(var + 1e-5), atol=1e-4)
        np.testing.assert_allclose(normed.mean(axis=axes), 0.0, atol=1e-5)


def test_resnet_instance_norm_matches_numpy_and_has_no_state():
    model, variables, x = _built("resnet8", norm="instance")
    assert sorted(variables) == ["params"]  # no batch statistics: a flat parameter vector works
    out, state = model.apply(variables, x, train=True, capture_intermediates=True,
                             mutable=["intermediates"])
    conv, normed = _captured(state, "stem_conv"), _captured(state, "stem_bn")
    mean, var = conv.mean(axis=(1, 2), keepdims=True), conv.var(axis=(1, 2), keepdims=True)
    assert var.min() > 1e-3
    np.testing.assert_allclose(normed, (conv - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    # Same parameter names as the batch-norm ResNet (the norms' scale/bias).
    batch = _built("resnet8")[1]["params"]
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(batch)
    # Per example: another example in the batch does not change this one's logits.
    one = model.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(one, out[:1], atol=1e-5)
    with pytest.raises(ValueError, match="'group'"):
        build("resnet8", num_classes=NUM_CLASSES, norm="group")


def test_convnet_without_norm_has_no_norm_module():
    _, variables, _ = _built("convnet", norm="none")
    assert sorted(variables["params"]) == ["conv1", "conv2", "conv3", "head"]


def test_convnet_sown_shapes_and_odd_sizes():
    # 28 -> 14 -> 7 -> 3, rounding down as PyTorch's AvgPool2d does.
    model, variables, x = _built("convnet", (2, 28, 28, 1))
    assert _sown_shapes(model, variables, x) == {
        "stage1": (2, 14, 14, 128),
        "stage2": (2, 7, 7, 128),
        "stage3": (2, 3, 3, 128),
        "features": (2, 3 * 3 * 128),
    }


# ---------------------------------------------------------------------------------------------
# ViT


def test_vit_distill_token_eval_is_mean_of_heads():
    model, variables, x = _built("vit", distill_token=True)
    assert {"dist_token", "dist_head"} <= set(variables["params"])
    train_logits, train_state = model.apply(variables, x, train=True, mutable=["intermediates"])
    eval_logits, eval_state = model.apply(variables, x, train=False, mutable=["intermediates"])
    dist_logits = eval_state["intermediates"]["dist_logits"][0]
    chex.assert_shape(dist_logits, (2, NUM_CLASSES))
    chex.assert_type(dist_logits, jnp.float32)
    chex.assert_trees_all_close(dist_logits, train_state["intermediates"]["dist_logits"][0])
    # No dropout or batch norm, so the train-mode output is exactly the CLS head's logits.
    assert not np.allclose(train_logits, dist_logits, atol=1e-3)
    chex.assert_trees_all_close(eval_logits, (train_logits + dist_logits) / 2, atol=1e-6)


def test_vit_sown_shapes():
    model, variables, x = _built("vit")
    tokens = 1 + (16 // 4) ** 2
    blocks = {f"block{i}": (2, tokens, 192) for i in range(1, 7)}
    assert _sown_shapes(model, variables, x) == {
        **blocks,
        "tokens": (2, tokens, 192),
        "features": (2, 192),
    }


# ---------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("convnet", {}, (2, 4, 4, 1)),  # depth 3 needs >= 8.
        ("convnet", {"depth": 4}, (2, 8, 16, 1)),
        ("vit", {}, (2, 10, 10, 3)),  # patch 4 does not divide 10.
        ("vit", {"patch_size": 8}, (2, 16, 12, 3)),
        ("resnet8", {}, (2, 32, 32)),
        ("mlp", {}, (2,)),
        ("convnet1d", {}, (2, 8, 8, 1)),
        ("convnet1d", {"depth": 5}, (2, 40, 1)),
    ],
)
def test_bad_input_shape_is_named(name, kwargs, shape):
    model = build(name, num_classes=NUM_CLASSES, **kwargs)
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        model.init(_key(0), jnp.zeros(shape), train=False)


def test_mlp_flattens_any_rank():
    model, variables, x = _built("mlp")  # Initialised on [2, 8, 8, 1].
    assert variables["params"]["dense1"]["kernel"].shape == (64, 256)
    logits = model.apply(variables, x, train=False)
    for shape in [(2, 16, 4), (2, 64)]:
        chex.assert_trees_all_close(model.apply(variables, x.reshape(shape), train=False), logits)


# ---------------------------------------------------------------------------------------------
# Sharding: batch norm under a data-parallel jit uses global batch statistics.


def test_sharded_batchnorm_matches_single_device():
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    model, variables, _ = _built("resnet8")  # ResNet parameters do not depend on the image size.
    x = _images((n, 8, 8, 3), seed=1)

    def step(variables, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    expected = jax.jit(step)(variables, x)
    replicated = NamedSharding(mesh, P())
    sharded = jax.jit(
        step, in_shardings=(replicated, NamedSharding(mesh, P("data"))), out_shardings=replicated
    )
    chex.assert_trees_all_close(sharded(variables, x), expected, atol=1e-5)


def test_convnet1d_matches_a_numpy_forward_pass():
    """Stride-2 padded 1-D convolutions + ReLU + dense, recomputed with NumPy loops."""
    model = build("convnet1d", num_classes=3, width=4, depth=2)
    x = np.random.default_rng(0).normal(size=(2, 12, 2)).astype(np.float32)
    variables = model.init(_key(0), x, train=False)
    p = jax.tree.map(np.asarray, variables["params"])
    h = x.astype(np.float64)
    for i in (1, 2):
        w, b = p[f"conv{i}"]["kernel"], p[f"conv{i}"]["bias"]  # [5, C_in, C_out]
        hp = np.pad(h, ((0, 0), (1, 1), (0, 0)))
        n_out = (hp.shape[1] - 5) // 2 + 1
        h = np.stack([np.einsum("bkc,kco->bo", hp[:, 2 * j:2 * j + 5], w) for j in range(n_out)],
                     axis=1) + b
        h = np.maximum(h, 0)
    expected = h.reshape(2, -1) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply(variables, x, train=False), expected, rtol=1e-4,
                               atol=1e-5)


def test_convnet1d_batch_norm_matches_numpy_in_both_modes():
    """norm="batch": batch statistics (biased variance) in training, running ones otherwise."""
    model = build("convnet1d", num_classes=3, width=4, depth=1, norm="batch")
    x = np.random.default_rng(1).normal(size=(5, 12, 2)).astype(np.float32)
    variables = model.init(_key(0), x, train=False)
    p = jax.tree.map(np.asarray, variables["params"])
    w, b = p["conv1"]["kernel"], p["conv1"]["bias"]
    hp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (0, 0)))
    h = np.stack([np.einsum("bkc,kco->bo", hp[:, 2 * j:2 * j + 5], w) for j in range(5)],
                 axis=1) + b
    mean, var = h.mean(axis=(0, 1)), h.var(axis=(0, 1))
    scale, shift = p["norm1"]["scale"], p["norm1"]["bias"]

    def head(z):
        return np.maximum(z * scale + shift, 0).reshape(5, -1) @ p["head"]["kernel"] + \
            p["head"]["bias"]

    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(logits, head((h - mean) / np.sqrt(var + 1e-5)), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["norm1"]["mean"], 0.1 * mean, rtol=1e-4,
                               atol=1e-6)
    # Inference: the initial running statistics (mean 0, variance 1).
    np.testing.assert_allclose(model.apply(variables, x, train=False),
                               head(h / np.sqrt(1 + 1e-5)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        build("convnet1d", num_classes=3, norm="layer")
