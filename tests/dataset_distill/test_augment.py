"""DSA augmentation against independent NumPy/SciPy references, finite differences and the
siamese / single-op contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxkd.dataset_distill import augment
from jaxkd.dataset_distill.augment import DSAConfig


def _np_warp(img, theta):
    """grid_sample(affine_grid(theta), align_corners=True, zeros) of one [H, W, C] image, via SciPy.

    Output pixel (i, j) samples input (row, col) = M @ (i, j) + offset in pixel coordinates;
    'grid-constant' interpolates against the zero padding, as grid_sample's zeros mode does.
    """
    h, w = img.shape[:2]
    (a, b, c), (d, e, f) = np.asarray(theta, np.float64)
    sx, sy = (w - 1) / 2, (h - 1) / 2
    matrix = np.array([[e, d * sy / sx], [b * sx / sy, a]])
    offset = np.array([sy * (1 - d - e + f), sx * (1 - a - b + c)])
    return np.stack([ndimage.affine_transform(img[..., k].astype(np.float64), matrix, offset,
                                              order=1, mode="grid-constant", cval=0.0)
                     for k in range(img.shape[-1])], -1)


def _np_shift(img, dy, dx):
    """out[i, j] = img[i + dy, j + dx], zero outside; img [H, W, C]."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[i, j] = img[i + dy, j + dx]
    return out


def _theta(angle_deg=0.0, sx=1.0, sy=1.0, tx=0.0, ty=0.0):
    r = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]])
    return np.concatenate([rot @ np.diag([sx, sy]), [[tx], [ty]]], 1).astype(np.float32)


@pytest.mark.parametrize("theta", [
    _theta(angle_deg=13.0), _theta(angle_deg=-40.0), _theta(sx=1.2, sy=0.8),
    _theta(sx=0.7, sy=1.15), _theta(angle_deg=25.0, sx=1.1, sy=0.9, tx=0.2, ty=-0.3)])
def test_affine_warp_matches_scipy(theta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 9, 2)).astype(np.float32)  # H != W catches axis mix-ups
    thetas = np.stack([theta, _theta(angle_deg=-7.0, sx=0.9)])
    got = augment.affine_warp(jnp.asarray(x), jnp.asarray(thetas))
    want = np.stack([_np_warp(x[i], thetas[i]) for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rotate_by_90_degrees_is_a_pixel_permutation():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    theta = jnp.asarray(np.stack([_theta(angle_deg=90.0)] * 2))
    got = augment.affine_warp(jnp.asarray(x), theta)
    np.testing.assert_allclose(got, np.rot90(x, -1, axes=(1, 2)), atol=1e-4)


def _params(op, shape, seed=0, cfg=DSAConfig(), siamese=False):
    p = augment.sample_params(jax.random.key(seed), shape, op, cfg, siamese=siamese)
    return p, {k: np.asarray(v) for k, v in p.items()}


def test_color_matches_numpy():
    x = np.random.default_rng(1).normal(size=(4, 5, 6, 3)).astype(np.float32)
    p, pn = _params("color", x.shape)
    y = x + pn["brightness"][:, None, None, None]
    y = (y - y.mean(-1, keepdims=True)) * pn["saturation"][:, None, None, None] + y.mean(
        -1, keepdims=True)
    m = y.mean((1, 2, 3), keepdims=True)
    y = (y - m) * pn["contrast"][:, None, None, None] + m
    np.testing.assert_allclose(augment.apply_op(jnp.asarray(x), "color", p), y, atol=1e-5)
    assert np.all(np.abs(pn["brightness"]) <= 0.5)
    assert np.all((pn["saturation"] >= 0) & (pn["saturation"] <= 2))
    assert np.all((pn["contrast"] >= 0.5) & (pn["contrast"] <= 1.5))


def test_crop_matches_numpy_and_shift_range():
    x = np.random.default_rng(2).normal(size=(64, 16, 8, 2)).astype(np.float32)
    p, pn = _params("crop", x.shape)
    got = np.asarray(augment.apply_op(jnp.asarray(x), "crop", p))
    for i in range(0, 64, 7):
        np.testing.assert_array_equal(got[i], _np_shift(x[i], *pn["shift"][i]))
    # pad = int(16 * 0.125 + 0.5) = 2 rows, int(8 * 0.125 + 0.5) = 1 column; both ends are reached.
    assert set(pn["shift"][:, 0]) == {-2, -1, 0, 1, 2} and set(pn["shift"][:, 1]) == {-1, 0, 1}


def test_cutout_matches_numpy_and_dsa_hole_size():
    x = np.random.default_rng(3).normal(size=(64, 10, 7, 2)).astype(np.float32)
    p, pn = _params("cutout", x.shape)
    got = np.asarray(augment.apply_op(jnp.asarray(x), "cutout", p))
    for i in range(64):
        want = x[i].copy()
        (r0, c0), (r1, c1) = pn["lo"][i], pn["hi"][i]
        want[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = 0.0
        np.testing.assert_array_equal(got[i], want)
    # DSA: hole int(10*.5+.5)=5 x int(7*.5+.5)=4, centre in [0, 10] x [0, 7], start centre - 2.
    np.testing.assert_array_equal(pn["hi"] - pn["lo"], np.broadcast_to([5, 4], (64, 2)))
    centre = pn["lo"] + [2, 2]
    assert centre.min() >= 0 and np.all(centre.max(0) <= [10, 7])


def test_flip_matches_numpy():
    x = np.random.default_rng(4).normal(size=(32, 3, 5, 2)).astype(np.float32)
    p, pn = _params("flip", x.shape)
    want = np.where(pn["flip"][:, None, None, None], x[:, :, ::-1], x)
    np.testing.assert_array_equal(augment.apply_op(jnp.asarray(x), "flip", p), want)
    assert 0 < pn["flip"].sum() < 32


@pytest.mark.parametrize("op", ["scale", "rotate"])
def test_geometric_ops_sample_theta_in_range_and_warp_like_scipy(op):
    x = np.random.default_rng(5).normal(size=(16, 6, 8, 1)).astype(np.float32)
    p, pn = _params(op, x.shape)
    th = pn["theta"]
    np.testing.assert_array_equal(th[:, :, 2], 0.0)
    if op == "scale":
        np.testing.assert_array_equal(th[:, [0, 1], [1, 0]], 0.0)
        diag = th[:, [0, 1], [0, 1]]
        assert np.all((diag >= 1 / 1.2 - 1e-6) & (diag <= 1.2 + 1e-6))
        assert not np.allclose(diag[:, 0], diag[:, 1])  # sx, sy drawn independently
    else:
        angle = np.rad2deg(np.arctan2(th[:, 0, 1], th[:, 0, 0]))
        assert np.all(np.abs(angle) <= 15.0 + 1e-4)
        np.testing.assert_allclose(th[:, 1, 0], -th[:, 0, 1])
    got = augment.apply_op(jnp.asarray(x), op, p)
    want = np.stack([_np_warp(x[i], th[i]) for i in range(16)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_siamese_same_key_same_transform_across_batch_sizes():
    rng = np.random.default_rng(6)
    big = jnp.asarray(rng.normal(size=(7, 8, 8, 3)).astype(np.float32))
    small = big[:3]
    f = jax.jit(augment.dsa)
    for seed in range(12):
        k = jax.random.key(seed)
        np.testing.assert_allclose(f(small, k), f(big, k)[:3], atol=1e-6)
    # One shared draw: identical examples stay identical ...
    same = jnp.broadcast_to(big[:1], (5, 8, 8, 3))
    rotate = jax.jit(augment.dsa, static_argnums=2, static_argnames="siamese")
    out = rotate(same, jax.random.key(0), DSAConfig("rotate"))
    np.testing.assert_allclose(out, jnp.broadcast_to(out[:1], out.shape), atol=1e-6)
    # ... and with siamese=False each example gets its own transform.
    out = rotate(same, jax.random.key(0), DSAConfig("rotate"), siamese=False)
    assert all(np.abs(out[i] - out[0]).max() > 1e-3 for i in range(1, 5))


def test_jitted_key_chooses_every_op_and_applies_sampled_params():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 8, 8, 3)).astype(np.float32))
    cfg = DSAConfig()
    ops = augment.parse_strategy(cfg.strategy)
    f = jax.jit(lambda x, k: augment.dsa(x, k, cfg))
    keys = jax.random.split(jax.random.key(0), 50)
    indices, k_params = jax.jit(jax.vmap(lambda k: augment.select_op(k, len(ops))))(keys)
    first = {ops[int(i)]: n for n, i in reversed(list(enumerate(indices)))}
    assert set(first) == set(ops)
    for op, n in first.items():  # dsa applied exactly that op with its sampled params
        want = jax.jit(lambda x, k, op=op: augment.apply_op(
            x, op, augment.sample_params(k, x.shape, op, cfg)))(x, k_params[n])
        np.testing.assert_allclose(f(x, keys[n]), want, atol=1e-5, err_msg=op)


def _fd_grad(f, x, eps=1e-6):
    flat = np.asarray(x).ravel()
    g = np.zeros_like(flat)
    for i in range(flat.size):
        d = np.zeros_like(flat)
        d[i] = eps
        g[i] = (f(jnp.asarray((flat + d).reshape(x.shape)))
                - f(jnp.asarray((flat - d).reshape(x.shape)))) / (2 * eps)
    return g.reshape(x.shape)


@pytest.mark.parametrize("strategy", ["rotate", "scale", "color", "crop_cutout_flip"])
def test_gradient_wrt_x_matches_finite_differences(strategy):
    with jax.enable_x64(True):
        rng = np.random.default_rng(8)
        x = rng.normal(size=(2, 5, 6, 2))
        w = jnp.asarray(rng.normal(size=(2, 5, 6, 2)))
        key = jax.random.key(3)
        f = jax.jit(lambda x: jnp.sum(jnp.sin(augment.dsa(x, key, DSAConfig(strategy))) * w))
        g = jax.grad(f)(jnp.asarray(x))
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, _fd_grad(f, x), rtol=1e-6, atol=1e-8)


def test_second_order_gradient_through_inner_step():
    """d/dx of a gradient-matching loss whose inner gradient is taken through dsa(x)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(9)
        x = rng.normal(size=(3, 4, 4, 2))
        y = jnp.asarray(rng.normal(size=(3, 2)))
        params = jnp.asarray(rng.normal(size=(32, 2)) * 0.1)
        target = jnp.asarray(rng.normal(size=(32, 2)))
        key = jax.random.key(1)

        def outer(x):
            def inner(p):
                z = augment.dsa(x, key, DSAConfig("rotate_scale_color")).reshape(3, -1)
                return jnp.mean(jnp.tanh(z @ p - y) ** 2)
            return jnp.sum((jax.grad(inner)(params) - target) ** 2)

        outer = jax.jit(outer)
        g = jax.grad(outer)(jnp.asarray(x))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
        np.testing.assert_allclose(g, _fd_grad(outer, x), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale"])
def test_one_d_signals(op):
    x = np.random.default_rng(10).normal(size=(16, 20, 2)).astype(np.float32)
    p, pn = _params(op, x.shape)
    got = np.asarray(augment.apply_op(jnp.asarray(x), op, p))
    assert got.shape == x.shape
    for i in range(16):
        if op == "color":
            y = x[i] + pn["brightness"][i]
            y = (y - y.mean(-1, keepdims=True)) * pn["saturation"][i] + y.mean(-1, keepdims=True)
            want = (y - y.mean()) * pn["contrast"][i] + y.mean()
        elif op == "crop":
            assert pn["shift"][i, 0] == 0  # no shift across the single row
            want = _np_shift(x[i][None], 0, pn["shift"][i, 1])[0]
        elif op == "cutout":
            want = x[i].copy()
            want[max(pn["lo"][i, 1], 0):max(pn["hi"][i, 1], 0)] = 0.0
            assert pn["hi"][i, 1] - pn["lo"][i, 1] == 10
        elif op == "flip":
            want = x[i, ::-1] if pn["flip"][i] else x[i]
        else:  # stretch along L: sample at a * j + (L - 1) / 2 * (1 - a), zero padded
            a = pn["theta"][i, 0, 0]
            want = np.stack([ndimage.affine_transform(
                x[i, :, k].astype(np.float64), [[a]], [9.5 * (1 - a)], order=1,
                mode="grid-constant") for k in range(2)], -1)
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    out = augment.dsa(jnp.asarray(x), jax.random.key(0), DSAConfig(op))
    assert out.shape == x.shape


def test_one_d_default_strategy_runs_and_rotate_is_rejected():
    x = jnp.ones((4, 20, 1))
    out = jax.jit(lambda x, k: augment.dsa(x, k, DSAConfig("color_crop_cutout_flip_scale")))(
        x, jax.random.key(0))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"'rotate'.*\(4, 20, 1\).*remove 'rotate'"):
        augment.dsa(x, jax.random.key(0), DSAConfig())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="'colour'.*color, crop, cutout, flip, scale, rotate"):
        augment.parse_strategy("colour_crop")
    with pytest.raises(ValueError, match="'zoom'"):
        DSAConfig(strategy="crop_zoom")
    with pytest.raises(ValueError, match=r"\[B, H, W, C\].*\(8, 8\)"):
        augment.dsa(jnp.ones((8, 8)), jax.random.key(0))


@pytest.mark.parametrize("strategy", ["none", "None", ""])
def test_no_augmentation_returns_x(strategy):
    assert augment.parse_strategy(strategy) == ()
    x = jnp.arange(24.0).reshape(2, 3, 4, 1)
    assert augment.dsa(x, jax.random.key(0), DSAConfig(strategy)) is x


def test_low_precision_dtype_is_preserved():
    # Tracing is enough: lax.switch rejects branches whose output dtypes differ.
    x = jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.bfloat16)
    assert jax.eval_shape(augment.dsa, x, jax.random.key(0)).dtype == jnp.bfloat16
