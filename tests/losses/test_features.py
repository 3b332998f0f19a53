"""Feature and relational KD losses against independent NumPy float64 references.

Each `_np_*` function below re-implements the RepDistiller / CRD formula in NumPy (a port of the
reference's tensor operations, not of our JAX code). A mask is checked against the reference
evaluated on the sub-batch of selected examples; gradients against central finite differences
of the NumPy reference.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import features as F

B = 6
PARTIAL = np.array([1, 0, 1, 1, 0, 1], np.float64)


# ------------------------------------------------------------------------------------------
# NumPy references (float64).
# ------------------------------------------------------------------------------------------


def _np_normalize(x, axis=-1):
    """torch.nn.functional.normalize."""
    n = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return x / np.maximum(n, 1e-12)


def _np_smooth_l1_mean(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))


def _np_fitnet(s, t):
    return np.mean((s - t) ** 2)


def _np_at(ss, ts, p=2.0):
    total = 0.0
    for s, t in zip(ss, ts):
        a_s = _np_normalize((np.abs(s) ** p).mean(-1).reshape(len(s), -1))
        a_t = _np_normalize((np.abs(t) ** p).mean(-1).reshape(len(t), -1))
        total += np.mean((a_s - a_t) ** 2)
    return total


def _np_pdist(e):
    """RepDistiller's RKDLoss.pdist (squared=False)."""
    sq = (e * e).sum(1)
    res = np.clip(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12, None)
    res = np.sqrt(res)
    res[np.arange(len(e)), np.arange(len(e))] = 0
    return res


def _np_angles(e):
    diff = e[None, :, :] - e[:, None, :]
    u = _np_normalize(diff, axis=2)
    return np.einsum("ijd,ikd->ijk", u, u)


def _np_rkd(s, t, wd=25.0, wa=50.0):
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    td = _np_pdist(t)
    td = td / td[td > 0].mean()
    sd = _np_pdist(s)
    sd = sd / sd[sd > 0].mean()
    return wd * _np_smooth_l1_mean(sd, td) + wa * _np_smooth_l1_mean(_np_angles(s), _np_angles(t))


def _np_pkt(s, t, eps=1e-7):
    def cond(x):
        x = x.reshape(len(x), -1)
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        sim = (x @ x.T + 1.0) / 2.0
        return sim / sim.sum(1, keepdims=True)

    p, q = cond(t), cond(s)
    return np.mean(p * np.log((p + eps) / (q + eps)))


def _np_sp(s, t):
    b = len(s)
    s, t = s.reshape(b, -1), t.reshape(b, -1)
    gs = _np_normalize(s @ s.T, axis=1)
    gt = _np_normalize(t @ t.T, axis=1)
    return ((gt - gs) ** 2).sum() / (b * b)


def _np_cc(s, t, gamma=0.4, p_order=2, kernel="gaussian"):
    def corr(x):
        x = _np_normalize(x.reshape(len(x), -1))
        sim = x @ x.T
        if kernel == "bilinear":
            return sim
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim**p
                   for p in range(p_order + 1))

    return np.mean((corr(s) - corr(t)) ** 2)


def _np_ickd(s, t):
    b, c = s.shape[0], s.shape[-1]

    def gram(x):
        x = x.reshape(b, -1, c).transpose(0, 2, 1)  # [B, C, HW] as in the authors' code
        return _np_normalize(x @ x.transpose(0, 2, 1), axis=2)

    return ((gram(s) - gram(t)) ** 2).sum() / (c * b)


def _np_ft(s, t):
    return np.mean(np.abs(_np_normalize(s.reshape(len(s), -1))
                          - _np_normalize(t.reshape(len(t), -1))))


def _np_vid(mu, t, alpha, eps=1e-5):
    var = np.log1p(np.exp(alpha)) + eps
    return np.mean(0.5 * ((mu - t) ** 2 / var + np.log(var)))


def _np_crd(s, t, mem_s, mem_t, idx, neg, *, T, n_data, z_s=None, z_t=None):
    """RepDistiller's CRDLoss: Embed's L2 norm, ContrastMemory scores, two ContrastLosses.

    Returns (loss, Z_v1, Z_v2): Z_v1 normalises the student-anchored scores (teacher bank),
    Z_v2 the teacher-anchored ones (student bank).
    """
    v1 = s / np.sqrt((s**2).sum(1, keepdims=True))
    v2 = t / np.sqrt((t**2).sum(1, keepdims=True))
    sample = np.concatenate([idx[:, None], neg], axis=1)
    out_v2 = np.exp(np.einsum("bkd,bd->bk", mem_s[sample], v2) / T)
    out_v1 = np.exp(np.einsum("bkd,bd->bk", mem_t[sample], v1) / T)
    z1 = out_v1.mean() * n_data if z_s is None else z_s
    z2 = out_v2.mean() * n_data if z_t is None else z_t

    def contrast(x):
        bsz, m = x.shape[0], x.shape[1] - 1
        pn = 1.0 / n_data
        log_d1 = np.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7))
        log_d0 = np.log((m * pn) / (x[:, 1:] + m * pn + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / bsz

    return contrast(out_v1 / z1) + contrast(out_v2 / z2), z1, z2


# ------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------


def _rng(seed):
    return np.random.default_rng(seed)


def _fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def _jit(fn, **kwargs):
    """`fn` with keyword arguments bound, jitted (eager op-by-op dispatch is slow on CPU)."""
    return jax.jit(lambda *args: fn(*args, **kwargs))


def _check_value_and_grad(jax_loss, np_loss, student, mask, *, rtol=1e-5, grad_rtol=2e-3):
    """`jax_loss(student_f32, mask)` vs `np_loss(student64[keep], keep)`: value and gradient."""
    keep = np.ones(len(student), bool) if mask is None else mask > 0
    m = None if mask is None else _f32(mask)
    value, grad = jax.jit(jax.value_and_grad(lambda x: jax_loss(x, m)))(
        _f32(student))
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, np_loss(student, keep), rtol=rtol, atol=1e-8)
    fd = _fd_grad(lambda x: np_loss(x, keep), student)
    assert np.abs(fd).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=grad_rtol, atol=1e-3 * np.abs(fd).max())
    # Excluded examples get exactly zero gradient.
    assert np.all(np.asarray(grad)[~keep] == 0)


def _f32(x):
    # Cast in NumPy: an eager on-device cast compiles a kernel per shape.
    return jnp.asarray(np.asarray(x, np.float32))


# ------------------------------------------------------------------------------------------
# Every loss at its default hyperparameters: value and gradient vs NumPy, masks, teacher
# gradients, bf16. One jitted value-and-grad per loss (mask traced) is shared by these tests.
# ------------------------------------------------------------------------------------------


def _crd_inputs(seed=13, b=B, d=4, n=12, k=5):
    r = _rng(seed)
    mem_s = _np_normalize(r.uniform(-1, 1, size=(n, d)))
    mem_t = _np_normalize(r.uniform(-1, 1, size=(n, d)))
    idx = r.choice(n, size=b, replace=False)
    neg = np.stack([r.choice(np.setdiff1d(np.arange(n), [i]), size=k) for i in idx])
    return r.normal(size=(b, d)), r.normal(size=(b, d)), mem_s, mem_t, idx, neg


_CRD_STATE = _crd_inputs(seed=21, d=3)[2:]  # mem_s, mem_t, idx, neg


def _crd_case(s, t, mask):
    mem_s, mem_t, idx, neg = _CRD_STATE
    return F.crd_loss(s, t, _f32(mem_s), _f32(mem_t), jnp.asarray(idx), jnp.asarray(neg),
                      num_data=12, z_s=20.0, z_t=20.0, mask=mask)


def _np_crd_case(s, t, keep):
    mem_s, mem_t, idx, neg = _CRD_STATE
    return _np_crd(s, t, mem_s, mem_t, idx[keep], neg[keep], T=0.07, n_data=12, z_s=20.0,
                   z_t=20.0)[0]


# name -> (loss(student, teacher, mask), NumPy reference(student, teacher, keep) on the selected
# examples, student input key, teacher input key)
CASES = {
    "fitnet": (lambda s, t, m: F.fitnet_loss(s, t, mask=m),
               lambda s, t, k: _np_fitnet(s, t), "map_t", "map_t"),
    "at": (lambda s, t, m: F.attention_transfer_loss([s], [t], mask=m),
           lambda s, t, k: _np_at([s], [t]), "map_s", "map_t"),
    "rkd": (lambda s, t, m: F.rkd_loss(s, t, mask=m),
            lambda s, t, k: _np_rkd(s, t), "emb_s", "emb_t"),
    "pkt": (lambda s, t, m: F.pkt_loss(s, t, mask=m),
            lambda s, t, k: _np_pkt(s, t), "emb_s", "emb_t"),
    "sp": (lambda s, t, m: F.similarity_preserving_loss(s, t, mask=m),
           lambda s, t, k: _np_sp(s, t), "map_s", "map_t"),
    "cc": (lambda s, t, m: F.cc_loss(s, t, mask=m),
           lambda s, t, k: _np_cc(s, t), "emb_s", "emb_t"),
    "ickd": (lambda s, t, m: F.ickd_loss(s, t, mask=m),
             lambda s, t, k: _np_ickd(s, t), "map_t", "map_t"),
    "ft": (lambda s, t, m: F.factor_transfer_loss(s, t, mask=m),
           lambda s, t, k: _np_ft(s, t), "map_t", "map_t"),
    "vid": (lambda s, t, m: F.vid_loss(s, t, jnp.zeros(4), mask=m),
            lambda s, t, k: _np_vid(s, t, np.zeros(4)), "map_t", "map_t"),
    "crd": (_crd_case, _np_crd_case, "emb_s", "emb_s"),
}


def _inputs(seed):
    r = _rng(seed)
    return {
        "map_s": r.normal(size=(B, 3, 3, 2)), "map_t": r.normal(size=(B, 3, 3, 4)),
        "emb_s": r.normal(size=(B, 3)), "emb_t": r.normal(size=(B, 5)),
    }


def _case(name):
    """``(loss, np_reference, student, teacher)``, the inputs float64 NumPy values that are
    exactly representable in bf16 (so bf16 and float32 calls see the same numbers)."""
    fn, ref, ks, kt = CASES[name]
    s, t = _inputs(20)[ks], _inputs(21)[kt]
    as_bf16 = lambda x: np.asarray(x).astype(jnp.bfloat16).astype(np.float64)
    return fn, ref, as_bf16(s), as_bf16(t)


@functools.cache
def _value_and_grads(name):
    """Jitted ``(value, (d/d student, d/d teacher))`` of ``CASES[name]`` with a traced mask."""
    return jax.jit(jax.value_and_grad(CASES[name][0], argnums=(0, 1)))


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "partial_mask"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_numpy(name, masked):
    fn, ref, s, t = _case(name)
    if masked:
        keep = PARTIAL > 0
        value, (grad, _) = _value_and_grads(name)(_f32(s), _f32(t), _f32(PARTIAL))
    else:  # the mask=None code path
        keep = np.ones(B, bool)
        value, grad = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, None)))(_f32(s), _f32(t))
    np_loss = lambda x: ref(x[keep], t[keep], keep)
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, np_loss(s), rtol=2e-5, atol=1e-8)
    fd = _fd_grad(np_loss, s)
    assert np.abs(fd).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=1e-3 * np.abs(fd).max())
    assert np.all(np.asarray(grad)[~keep] == 0)  # excluded examples get exactly zero gradient


@pytest.mark.parametrize("name", sorted(CASES))
def test_masks_teacher_gradients_and_bf16(name):
    """An all-zero mask gives exactly 0 with finite gradients; excluded rows may hold NaN/inf
    without changing the value or the gradients' finiteness; no gradient reaches the teacher
    (CRD's teacher head excepted); bf16 inputs give a float32 result equal to the float32
    computation on the same values."""
    fn, _, s, t = _case(name)
    s, t = _f32(s), _f32(t)
    vg = _value_and_grads(name)

    value, (gs, gt) = vg(s, t, _f32(np.zeros(B)))
    assert float(value) == 0.0
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))

    m = _f32(PARTIAL)
    clean, _ = vg(s, t, m)
    excluded = jnp.asarray(PARTIAL == 0)
    s_bad = jnp.where(excluded[(...,) + (None,) * (s.ndim - 1)], jnp.nan, s)
    t_bad = jnp.where(excluded[(...,) + (None,) * (t.ndim - 1)], jnp.inf, t)
    value, (gs, gt) = vg(s_bad, t_bad, m)
    np.testing.assert_allclose(value, clean, rtol=1e-6)
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))

    ones = _f32(np.ones(B))
    value_f32, (gs, gt) = vg(s, t, ones)
    assert np.abs(np.asarray(gs)).max() > 0
    if name == "crd":  # the teacher-side projection head is trained by CRD
        assert np.abs(np.asarray(gt)).max() > 0
    else:
        assert np.all(np.asarray(gt) == 0)

    got = jax.jit(fn)(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16), ones)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, value_f32, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Other hyperparameters and input layouts, per loss.
# ------------------------------------------------------------------------------------------


def test_fitnet_fractional_weights_are_a_weighted_mean():
    r = _rng(1)
    s, t = r.normal(size=(4, 5)), r.normal(size=(4, 5))
    w = np.array([1.0, 0.5, 0.0, 2.0])
    per = np.array([_np_fitnet(s[i:i + 1], t[i:i + 1]) for i in range(4)])
    got = _jit(F.fitnet_loss, mask=_f32(w))(_f32(s), _f32(t))
    np.testing.assert_allclose(got, (per * w).sum() / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("p,mask", [(1.0, None), (3.0, PARTIAL)])
def test_attention_transfer_other_p(p, mask):
    r = _rng(2)
    s, t = r.normal(size=(B, 3, 3, 2)), r.normal(size=(B, 3, 3, 5))
    _check_value_and_grad(
        lambda x, m: F.attention_transfer_loss([x], [_f32(t)], p=p, mask=m),
        lambda x, k: _np_at([x[k]], [t[k]], p), s, mask)


def test_attention_transfer_sums_pairs_of_different_sizes():
    r = _rng(3)
    ss = [r.normal(size=(B, 4, 4, 2)), r.normal(size=(B, 2, 2, 3))]
    ts = [r.normal(size=(B, 4, 4, 6)), r.normal(size=(B, 2, 2, 8))]
    js, jt = [_f32(x) for x in ss], [_f32(x) for x in ts]
    at = jax.jit(F.attention_transfer_loss)
    np.testing.assert_allclose(at(js, jt), _np_at(ss, ts), rtol=1e-5)
    keep = PARTIAL > 0
    np.testing.assert_allclose(at(js, jt, mask=_f32(PARTIAL)),
                               _np_at([x[keep] for x in ss], [x[keep] for x in ts]), rtol=1e-5)
    # A single array is one pair.
    np.testing.assert_allclose(at(js[0], jt[0]), _np_at(ss[:1], ts[:1]), rtol=1e-5)


def test_rkd_weights_and_conv_maps():
    r = _rng(5)
    s, t = r.normal(size=(5, 2, 2, 3)), r.normal(size=(5, 2, 2, 4)) * 3
    # Weights passed as traced arrays (validation only applies to Python numbers): one compile.
    rkd = jax.jit(lambda a, b, wd, wa: F.rkd_loss(a, b, distance_weight=wd, angle_weight=wa))
    for wd, wa in [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)]:
        got = rkd(_f32(s), _f32(t), jnp.float32(wd), jnp.float32(wa))
        np.testing.assert_allclose(got, _np_rkd(s, t, wd, wa), rtol=1e-5)


@pytest.mark.parametrize("kernel,gamma,p_order", [("gaussian", 1.0, 3), ("bilinear", 0.4, 2)])
def test_cc_other_kernels(kernel, gamma, p_order):
    r = _rng(8)
    s, t = r.normal(size=(B, 4)), r.normal(size=(B, 6))
    _check_value_and_grad(
        lambda x, m: F.cc_loss(x, _f32(t), gamma=gamma, p_order=p_order, kernel=kernel, mask=m),
        lambda x, k: _np_cc(x[k], t[k], gamma, p_order, kernel), s, PARTIAL)


def test_ickd_resolutions_may_differ():
    r = _rng(9)
    s, t = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 3, 3, 3))
    _check_value_and_grad(
        lambda x, m: F.ickd_loss(x, _f32(t), mask=m),
        lambda x, k: _np_ickd(x[k], t[k]), s, PARTIAL)


def test_vid_learned_variance():
    r = _rng(11)
    mu, t, alpha = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 2, 2, 3)), r.normal(size=3)
    _check_value_and_grad(
        lambda x, m: F.vid_loss(x, _f32(t), _f32(alpha), mask=m),
        lambda x, k: _np_vid(x[k], t[k], alpha), mu, PARTIAL)
    # Gradient w.r.t. alpha.
    g = jax.jit(jax.grad(lambda a: F.vid_loss(_f32(mu), _f32(t), a)))(_f32(alpha))
    fd = _fd_grad(lambda a: _np_vid(mu, t, a), alpha)
    np.testing.assert_allclose(g, fd, rtol=2e-3, atol=1e-6)


def _crd_jax(s, t, mem_s, mem_t, idx, neg, **kw):
    f = lambda a: _f32(a)
    return _jit(F.crd_loss, **kw)(f(s), f(t), f(mem_s), f(mem_t), jnp.asarray(idx),
                                  jnp.asarray(neg))


def test_crd_teacher_head_gets_gradient_and_memory_does_not():
    s, t, mem_s, mem_t, idx, neg = _crd_inputs(seed=14)
    z1, z2 = 30.0, 40.0
    f = lambda a: _f32(a)
    g_t, g_ms, g_mt = jax.jit(jax.grad(
        lambda te, ms, mt: F.crd_loss(f(s), te, ms, mt, jnp.asarray(idx), jnp.asarray(neg),
                                      temperature=0.1, num_data=12, z_s=z1, z_t=z2),
        argnums=(0, 1, 2)))(f(t), f(mem_s), f(mem_t))
    fd = _fd_grad(lambda x: _np_crd(s, x, mem_s, mem_t, idx, neg, T=0.1, n_data=12, z_s=z1,
                                    z_t=z2)[0], t)
    np.testing.assert_allclose(g_t, fd, rtol=2e-3, atol=1e-3 * np.abs(fd).max())
    assert np.all(np.asarray(g_ms) == 0) and np.all(np.asarray(g_mt) == 0)


def test_crd_normalization_constants_match_reference_first_batch():
    s, t, mem_s, mem_t, idx, neg = _crd_inputs(seed=15)
    want, z1, z2 = _np_crd(s, t, mem_s, mem_t, idx, neg, T=0.07, n_data=12)
    f = lambda a: _f32(a)
    consts = _jit(F.crd_normalization_constants, temperature=0.07, num_data=12)
    zs, zt = consts(f(s), f(t), f(mem_s), f(mem_t), jnp.asarray(idx), jnp.asarray(neg))
    np.testing.assert_allclose([zs, zt], [z1, z2], rtol=1e-5)
    # z=None estimates Z from the batch: the reference's first-batch behaviour.
    got = _crd_jax(s, t, mem_s, mem_t, idx, neg, temperature=0.07, num_data=12, z_s=None,
                   z_t=None)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    got = _crd_jax(s, t, mem_s, mem_t, idx, neg, temperature=0.07, num_data=12, z_s=zs, z_t=zt)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    # With a mask, Z is the mean over the selected examples only.
    keep = PARTIAL > 0
    _, z1m, z2m = _np_crd(s[keep], t[keep], mem_s, mem_t, idx[keep], neg[keep], T=0.07,
                          n_data=12)
    zs, zt = _jit(F.crd_normalization_constants, temperature=0.07, num_data=12,
                  mask=_f32(PARTIAL))(f(s), f(t), f(mem_s), f(mem_t), jnp.asarray(idx),
                                             jnp.asarray(neg))
    np.testing.assert_allclose([zs, zt], [z1m, z2m], rtol=1e-5)


def test_crd_embeddings_are_normalised_inside():
    s, t, mem_s, mem_t, idx, neg = _crd_inputs(seed=16)
    kw = dict(temperature=0.07, num_data=12, z_s=50.0, z_t=60.0)
    a = _crd_jax(s, t, mem_s, mem_t, idx, neg, **kw)
    b = _crd_jax(3 * s, 0.2 * t, mem_s, mem_t, idx, neg, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_method_card_defaults():
    import inspect

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(F.rkd_loss, "distance_weight") == 25.0
    assert default(F.rkd_loss, "angle_weight") == 50.0
    assert default(F.attention_transfer_loss, "p") == 2.0
    assert default(F.crd_loss, "temperature") == 0.07
    assert default(F.crd_update_memory, "momentum") == 0.5
    assert default(F.pkt_loss, "eps") == 1e-7


# ------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------


def _f(*shape):
    return np.ones(shape, np.float32)


def test_shape_errors_name_both_shapes_and_an_adapter():
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\).*\(2, 4, 4, 8\).*ConvRegressor"):
        F.fitnet_loss(_f(2, 4, 4, 3), _f(2, 4, 4, 8))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 5\).*Dense\(5\)"):
        F.fitnet_loss(_f(2, 3), _f(2, 5))
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\).*\(2, 4, 4, 3\).*resize_spatial"):
        F.attention_transfer_loss([_f(2, 8, 8, 3)], [_f(2, 4, 4, 3)])
    with pytest.raises(ValueError, match="number of student and teacher maps"):
        F.attention_transfer_loss([_f(2, 4, 4, 3)], [_f(2, 4, 4, 3), _f(2, 4, 4, 3)])
    with pytest.raises(ValueError, match="rank 4"):
        F.attention_transfer_loss([_f(2, 3)], [_f(2, 3)])
    with pytest.raises(ValueError, match="batch"):
        F.rkd_loss(_f(3, 4), _f(4, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 3, 4\).*\(2, 3, 3, 6\).*ConvRegressor"):
        F.ickd_loss(_f(2, 3, 3, 4), _f(2, 3, 3, 6))
    with pytest.raises(ValueError, match="Translator"):
        F.factor_transfer_loss(_f(2, 3, 3, 4), _f(2, 3, 3, 6))
    with pytest.raises(ValueError, match="VIDRegressor"):
        F.vid_loss(_f(2, 3, 3, 4), _f(2, 3, 3, 6), _f(6))
    with pytest.raises(ValueError, match="alpha"):
        F.vid_loss(_f(2, 3, 3, 4), _f(2, 3, 3, 4), _f(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        F.pkt_loss(_f(3, 4), _f(3, 4), mask=jnp.ones((4,)))
    with pytest.raises(ValueError, match="float"):
        F.similarity_preserving_loss(jnp.ones((3, 4), jnp.int32), _f(3, 4))


def test_crd_shape_errors():
    idx, neg = jnp.arange(2), jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\).*LinearEmbed"):
        F.crd_loss(_f(2, 4), _f(2, 5), _f(10, 4), _f(10, 4), idx, neg, num_data=10, z_s=1.0,
                   z_t=1.0)
    with pytest.raises(ValueError, match="memory_teacher.*crd_init_memory"):
        F.crd_loss(_f(2, 4), _f(2, 4), _f(10, 4), _f(9, 4), idx, neg, num_data=10, z_s=1.0,
                   z_t=1.0)
    with pytest.raises(ValueError, match="contrast_idx"):
        F.crd_loss(_f(2, 4), _f(2, 4), _f(10, 4), _f(10, 4), idx, neg[:, :0], num_data=10,
                   z_s=1.0, z_t=1.0)
    with pytest.raises(ValueError, match="indices"):
        F.crd_loss(_f(2, 4), _f(2, 4), _f(10, 4), _f(10, 4), idx.astype(jnp.float32), neg,
                   num_data=10, z_s=1.0, z_t=1.0)


@pytest.mark.parametrize("call,name", [
    (lambda: F.attention_transfer_loss([_f(2, 3, 3, 2)], [_f(2, 3, 3, 2)], p=0.5), "p"),
    (lambda: F.rkd_loss(_f(3, 2), _f(3, 2), distance_weight=-1.0), "distance_weight"),
    (lambda: F.rkd_loss(_f(3, 2), _f(3, 2), angle_weight=-1.0), "angle_weight"),
    (lambda: F.pkt_loss(_f(3, 2), _f(3, 2), eps=0.0), "eps"),
    (lambda: F.vid_loss(_f(3, 2), _f(3, 2), _f(2), eps=0.0), "eps"),
    (lambda: F.cc_loss(_f(3, 2), _f(3, 2), gamma=0.0), "gamma"),
    (lambda: F.cc_loss(_f(3, 2), _f(3, 2), p_order=-1), "p_order"),
    (lambda: F.cc_loss(_f(3, 2), _f(3, 2), p_order=1.5), "p_order"),
    (lambda: F.cc_loss(_f(3, 2), _f(3, 2), kernel="rbf"), "kernel"),
    (lambda: F.crd_loss(_f(2, 4), _f(2, 4), _f(10, 4), _f(10, 4), jnp.arange(2),
                        jnp.ones((2, 3), jnp.int32), temperature=0.0, num_data=10, z_s=1.0,
                        z_t=1.0), "temperature"),
    (lambda: F.crd_loss(_f(2, 4), _f(2, 4), _f(10, 4), _f(10, 4), jnp.arange(2),
                        jnp.ones((2, 3), jnp.int32), num_data=10, z_s=-1.0, z_t=1.0), "z_s"),
    (lambda: F.crd_loss(_f(2, 4), _f(2, 4), _f(1, 4), _f(1, 4), jnp.arange(2),
                        jnp.ones((2, 3), jnp.int32), num_data=1, z_s=1.0, z_t=1.0), "num_data"),
    (lambda: F.crd_update_memory(_f(10, 4), jnp.arange(2), _f(2, 4), momentum=1.0), "momentum"),
    (lambda: F.crd_sample_negatives(jax.random.PRNGKey(0), jnp.arange(2), 10, 0),
     "num_negatives"),
    (lambda: F.crd_sample_negatives(jax.random.PRNGKey(0), jnp.arange(2), 1, 4), "num_data"),
    (lambda: F.crd_init_memory(jax.random.PRNGKey(0), 10, 0), "dim"),
])
def test_bad_hyperparameters_raise_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ------------------------------------------------------------------------------------------
# CRD state helpers.
# ------------------------------------------------------------------------------------------


def test_crd_init_memory():
    # Eager: both calls reuse one compiled jax.random.uniform.
    init = F.crd_init_memory
    ms, mt = init(jax.random.PRNGKey(0), 500, 16)
    assert ms.shape == mt.shape == (500, 16) and ms.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(ms, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(ms, mt)
    raw_s, _ = init(jax.random.PRNGKey(0), 500, 16, normalize=False)
    stdv = 1.0 / math.sqrt(16 / 3)
    assert np.abs(raw_s).max() <= stdv
    # Coordinates ~ U(-stdv, stdv) with variance 1/dim: squared row norms average 1.
    assert abs(np.mean(np.sum(np.asarray(raw_s) ** 2, axis=1)) - 1.0) < 0.05
    np.testing.assert_allclose(_np_normalize(np.asarray(raw_s)), ms, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.5, 0.0, 0.9])
def test_crd_update_memory_is_a_normalised_momentum_update(momentum):
    r = _rng(30)
    mem = _np_normalize(r.normal(size=(10, 4)))
    idx = np.array([3, 7, 0, 5])
    emb = r.normal(size=(4, 4)) * 2
    mask = np.array([1, 1, 0, 1], np.float32)
    update = _jit(F.crd_update_memory, momentum=momentum, mask=_f32(mask))
    new = np.asarray(update(_f32(mem), jnp.asarray(idx),
                            _f32(emb)))
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-5)
    want = mem.copy()
    for b, i in enumerate(idx):
        if mask[b]:
            want[i] = _np_normalize(momentum * mem[i] + (1 - momentum) * _np_normalize(emb[b]))
    np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new[0], mem[0].astype(np.float32))  # masked example's row


def test_crd_update_memory_under_jit_and_no_gradient():
    mem = _f32(_np_normalize(_rng(41).normal(size=(8, 3))))
    emb = _f32(np.ones((2, 3)))
    g = jax.jit(jax.grad(lambda e: jnp.sum(F.crd_update_memory(mem, jnp.array([1, 2]), e))))(
        emb)
    assert np.all(np.asarray(g) == 0)
    new = np.asarray(jax.jit(F.crd_update_memory)(mem, jnp.array([1, 2]), emb))
    np.testing.assert_allclose(new[[1, 2]], _np_normalize(
        0.5 * np.asarray(mem)[[1, 2]] + 0.5 * _np_normalize(np.ones((2, 3)))), rtol=1e-5)


def test_crd_sample_negatives_excludes_the_positive_and_is_uniform():
    n, k = 5, 4000
    idx = jnp.arange(n)
    sample = F.crd_sample_negatives
    neg = np.asarray(sample(jax.random.PRNGKey(0), idx, n, k))
    assert neg.shape == (n, k) and neg.dtype == np.int32
    assert neg.min() >= 0 and neg.max() < n
    assert not np.any(neg == np.arange(n)[:, None])
    for b in range(n):
        counts = np.bincount(neg[b], minlength=n)
        others = np.delete(counts, b)
        # Expect k / (n - 1) = 1000 each; std ~ 27.
        assert np.all(np.abs(others - k / (n - 1)) < 150), counts
    # Larger N (same shapes, so no new compile).
    pos = np.array([0, 99, 50, 1, 2])
    big = np.asarray(sample(jax.random.PRNGKey(1), jnp.asarray(pos), 100, k))
    assert not np.any(big == pos[:, None])
    assert big.max() <= 99 and big.min() >= 0 and len(np.unique(big)) == 100


def test_crd_end_to_end_step_decreases_loss():
    """A few SGD steps on the student embedding (fixed Z, teacher bank warmed) lower the loss."""
    n, d, b = 32, 8, 8
    r = _rng(40)
    ms = _f32(_np_normalize(r.normal(size=(n, d))))
    mt = _f32(_np_normalize(r.normal(size=(n, d))))
    t = _f32(r.normal(size=(b, d)))
    s0 = _f32(r.normal(size=(b, d)))
    idx = jnp.arange(b)

    @jax.jit
    def run(s, ms, mt):
        neg = F.crd_sample_negatives(jax.random.PRNGKey(3), idx, n, 16)
        mt = jax.lax.fori_loop(0, 5, lambda _, m: F.crd_update_memory(m, idx, t), mt)
        zs, zt = F.crd_normalization_constants(s, t, ms, mt, idx, neg, num_data=n)

        def loss(x):
            return F.crd_loss(x, t, ms, mt, idx, neg, num_data=n, z_s=zs, z_t=zt)

        first = loss(s)
        s = jax.lax.fori_loop(0, 20, lambda _, x: x - 0.05 * jax.grad(loss)(x), s)
        return first, loss(s)

    first, last = run(s0, ms, mt)
    assert float(last) < float(first)


def test_rkd_gradient_is_finite_when_two_embeddings_coincide():
    """Regression: identical rows (duplicate images, dead ReLU features) gave a NaN gradient."""
    s = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    s = s.at[1].set(s[0])
    t = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    value, grad = jax.value_and_grad(lambda x: F.rkd_loss(x, t))(s)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    value, grad = jax.value_and_grad(lambda x: F.rkd_loss(x, t))(jnp.zeros((5, 4)))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
