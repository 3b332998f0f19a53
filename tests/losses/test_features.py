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
    m = None if mask is None else jnp.asarray(mask, jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda x: jax_loss(x, m)))(
        jnp.asarray(student, jnp.float32))
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, np_loss(student, keep), rtol=rtol, atol=1e-8)
    fd = _fd_grad(lambda x: np_loss(x, keep), student)
    assert np.abs(fd).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=grad_rtol, atol=1e-3 * np.abs(fd).max())
    # Excluded examples get exactly zero gradient.
    assert np.all(np.asarray(grad)[~keep] == 0)


MASKS = [None, PARTIAL]


# ------------------------------------------------------------------------------------------
# Value and gradient vs NumPy, per loss.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", MASKS)
def test_fitnet(mask):
    r = _rng(0)
    s, t = r.normal(size=(B, 3, 3, 4)), r.normal(size=(B, 3, 3, 4))
    _check_value_and_grad(
        lambda x, m: F.fitnet_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_fitnet(x[k], t[k]), s, mask)


def test_fitnet_fractional_weights_are_a_weighted_mean():
    r = _rng(1)
    s, t = r.normal(size=(4, 5)), r.normal(size=(4, 5))
    w = np.array([1.0, 0.5, 0.0, 2.0])
    per = np.array([_np_fitnet(s[i:i + 1], t[i:i + 1]) for i in range(4)])
    got = _jit(F.fitnet_loss, mask=jnp.asarray(w))(jnp.asarray(s, jnp.float32),
                                                   jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got, (per * w).sum() / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("p,mask", [(2.0, None), (2.0, PARTIAL), (1.0, PARTIAL), (3.0, None)])
def test_attention_transfer(p, mask):
    r = _rng(2)
    s, t = r.normal(size=(B, 3, 3, 2)), r.normal(size=(B, 3, 3, 5))
    _check_value_and_grad(
        lambda x, m: F.attention_transfer_loss([x], [jnp.asarray(t, jnp.float32)], p=p, mask=m),
        lambda x, k: _np_at([x[k]], [t[k]], p), s, mask)


def test_attention_transfer_sums_pairs_of_different_sizes():
    r = _rng(3)
    ss = [r.normal(size=(B, 4, 4, 2)), r.normal(size=(B, 2, 2, 3))]
    ts = [r.normal(size=(B, 4, 4, 6)), r.normal(size=(B, 2, 2, 8))]
    js = [jnp.asarray(x, jnp.float32) for x in ss]
    jt = [jnp.asarray(x, jnp.float32) for x in ts]
    at = jax.jit(F.attention_transfer_loss)
    np.testing.assert_allclose(at(js, jt), _np_at(ss, ts), rtol=1e-5)
    keep = PARTIAL > 0
    np.testing.assert_allclose(at(js, jt, mask=jnp.asarray(PARTIAL)),
                               _np_at([x[keep] for x in ss], [x[keep] for x in ts]), rtol=1e-5)
    # A single array is one pair.
    np.testing.assert_allclose(at(js[0], jt[0]), _np_at(ss[:1], ts[:1]), rtol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
def test_rkd(mask):
    r = _rng(4)
    s, t = r.normal(size=(B, 3)), r.normal(size=(B, 5)) * 3
    _check_value_and_grad(
        lambda x, m: F.rkd_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_rkd(x[k], t[k]), s, mask)


def test_rkd_weights_and_conv_maps():
    r = _rng(5)
    s, t = r.normal(size=(5, 2, 2, 3)), r.normal(size=(5, 2, 2, 4))
    for wd, wa in [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)]:
        got = _jit(F.rkd_loss, distance_weight=wd, angle_weight=wa)(
            jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
        np.testing.assert_allclose(got, _np_rkd(s, t, wd, wa), rtol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
def test_pkt(mask):
    r = _rng(6)
    s, t = r.normal(size=(B, 4)), r.normal(size=(B, 7))
    _check_value_and_grad(
        lambda x, m: F.pkt_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_pkt(x[k], t[k]), s, mask, rtol=2e-5)


@pytest.mark.parametrize("mask", MASKS)
def test_similarity_preserving(mask):
    r = _rng(7)
    s, t = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 3, 3, 5))
    _check_value_and_grad(
        lambda x, m: F.similarity_preserving_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_sp(x[k], t[k]), s, mask)


@pytest.mark.parametrize("kernel,gamma,p_order,mask", [
    ("gaussian", 0.4, 2, None), ("gaussian", 0.4, 2, PARTIAL), ("gaussian", 1.0, 3, PARTIAL),
    ("bilinear", 0.4, 2, None)])
def test_cc(kernel, gamma, p_order, mask):
    r = _rng(8)
    s, t = r.normal(size=(B, 4)), r.normal(size=(B, 6))
    _check_value_and_grad(
        lambda x, m: F.cc_loss(x, jnp.asarray(t, jnp.float32), gamma=gamma, p_order=p_order,
                               kernel=kernel, mask=m),
        lambda x, k: _np_cc(x[k], t[k], gamma, p_order, kernel), s, mask)


@pytest.mark.parametrize("mask", MASKS)
def test_ickd(mask):
    r = _rng(9)
    s, t = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 3, 3, 3))  # resolutions may differ
    _check_value_and_grad(
        lambda x, m: F.ickd_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_ickd(x[k], t[k]), s, mask)


@pytest.mark.parametrize("mask", MASKS)
def test_factor_transfer(mask):
    r = _rng(10)
    s, t = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 2, 2, 3))
    _check_value_and_grad(
        lambda x, m: F.factor_transfer_loss(x, jnp.asarray(t, jnp.float32), mask=m),
        lambda x, k: _np_ft(x[k], t[k]), s, mask)


@pytest.mark.parametrize("mask", MASKS)
def test_vid_student_mean(mask):
    r = _rng(11)
    mu, t, alpha = r.normal(size=(B, 2, 2, 3)), r.normal(size=(B, 2, 2, 3)), r.normal(size=3)
    _check_value_and_grad(
        lambda x, m: F.vid_loss(x, jnp.asarray(t, jnp.float32), jnp.asarray(alpha, jnp.float32),
                                mask=m),
        lambda x, k: _np_vid(x[k], t[k], alpha), mu, mask)


def test_vid_alpha_gradient():
    r = _rng(12)
    mu, t, alpha = r.normal(size=(4, 5)), r.normal(size=(4, 5)), r.normal(size=5)
    g = jax.jit(jax.grad(lambda a: F.vid_loss(jnp.asarray(mu, jnp.float32), jnp.asarray(t, jnp.float32),
                                      a)))(jnp.asarray(alpha, jnp.float32))
    fd = _fd_grad(lambda a: _np_vid(mu, t, a), alpha)
    np.testing.assert_allclose(g, fd, rtol=2e-3, atol=1e-6)


def _crd_inputs(seed=13, b=B, d=4, n=12, k=5):
    r = _rng(seed)
    mem_s = _np_normalize(r.uniform(-1, 1, size=(n, d)))
    mem_t = _np_normalize(r.uniform(-1, 1, size=(n, d)))
    idx = r.choice(n, size=b, replace=False)
    neg = np.stack([r.choice(np.setdiff1d(np.arange(n), [i]), size=k) for i in idx])
    return r.normal(size=(b, d)), r.normal(size=(b, d)), mem_s, mem_t, idx, neg


def _crd_jax(s, t, mem_s, mem_t, idx, neg, **kw):
    f = lambda a: jnp.asarray(a, jnp.float32)
    return _jit(F.crd_loss, **kw)(f(s), f(t), f(mem_s), f(mem_t), jnp.asarray(idx),
                                  jnp.asarray(neg))


@pytest.mark.parametrize("mask", MASKS)
def test_crd_value_and_student_gradient(mask):
    s, t, mem_s, mem_t, idx, neg = _crd_inputs()
    _, z1, z2 = _np_crd(s, t, mem_s, mem_t, idx, neg, T=0.07, n_data=12)
    f = lambda a: jnp.asarray(a, jnp.float32)
    _check_value_and_grad(
        lambda x, m: F.crd_loss(x, f(t), f(mem_s), f(mem_t), jnp.asarray(idx), jnp.asarray(neg),
                                temperature=0.07, num_data=12, z_s=z1, z_t=z2, mask=m),
        lambda x, k: _np_crd(x[k], t[k], mem_s, mem_t, idx[k], neg[k], T=0.07, n_data=12,
                             z_s=z1, z_t=z2)[0],
        s, mask, rtol=2e-5)


def test_crd_teacher_head_gets_gradient_and_memory_does_not():
    s, t, mem_s, mem_t, idx, neg = _crd_inputs(seed=14)
    z1, z2 = 30.0, 40.0
    f = lambda a: jnp.asarray(a, jnp.float32)
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
    f = lambda a: jnp.asarray(a, jnp.float32)
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
                  mask=jnp.asarray(PARTIAL))(f(s), f(t), f(mem_s), f(mem_t), jnp.asarray(idx),
                                             jnp.asarray(neg))
    np.testing.assert_allclose([zs, zt], [z1m, z2m], rtol=1e-5)


def test_crd_embeddings_are_normalised_inside():
    s, t, mem_s, mem_t, idx, neg = _crd_inputs(seed=16)
    kw = dict(temperature=0.07, num_data=12, z_s=50.0, z_t=60.0)
    a = _crd_jax(s, t, mem_s, mem_t, idx, neg, **kw)
    b = _crd_jax(3 * s, 0.2 * t, mem_s, mem_t, idx, neg, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Properties shared by every loss.
# ------------------------------------------------------------------------------------------


def _inputs(seed=20):
    r = _rng(seed)
    return {
        "map_s": r.normal(size=(B, 3, 3, 2)), "map_t": r.normal(size=(B, 3, 3, 4)),
        "emb_s": r.normal(size=(B, 3)), "emb_t": r.normal(size=(B, 5)),
        "alpha": r.normal(size=4),
    }


def _crd_case(s, t, mask):
    _, _, mem_s, mem_t, idx, neg = _crd_inputs(seed=21, d=3)
    return F.crd_loss(s, t, jnp.asarray(mem_s, jnp.float32), jnp.asarray(mem_t, jnp.float32),
                      jnp.asarray(idx), jnp.asarray(neg), num_data=12, z_s=20.0, z_t=20.0,
                      mask=mask)


# name -> (loss(student, teacher, mask), student key, teacher key)
CASES = {
    "fitnet": (lambda s, t, m: F.fitnet_loss(s, t, mask=m), "map_t", "map_t"),
    "at": (lambda s, t, m: F.attention_transfer_loss([s], [t], mask=m), "map_s", "map_t"),
    "rkd": (lambda s, t, m: F.rkd_loss(s, t, mask=m), "emb_s", "emb_t"),
    "pkt": (lambda s, t, m: F.pkt_loss(s, t, mask=m), "emb_s", "emb_t"),
    "sp": (lambda s, t, m: F.similarity_preserving_loss(s, t, mask=m), "map_s", "map_t"),
    "cc": (lambda s, t, m: F.cc_loss(s, t, mask=m), "emb_s", "emb_t"),
    "ickd": (lambda s, t, m: F.ickd_loss(s, t, mask=m), "map_t", "map_t"),
    "ft": (lambda s, t, m: F.factor_transfer_loss(s, t, mask=m), "map_t", "map_t"),
    "vid": (lambda s, t, m: F.vid_loss(s, t, jnp.zeros(4), mask=m), "map_t", "map_t"),
    "crd": (_crd_case, "emb_s", "emb_s"),
}


def _case(name, seed=20):
    fn, ks, kt = CASES[name]
    x = _inputs(seed)
    s = x[ks]
    t = x[kt] if ks != kt else _inputs(seed + 1)[kt]
    return fn, jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)


@pytest.mark.parametrize("name", sorted(CASES))
def test_masks_and_teacher_gradients(name):
    """One compiled value-and-grad (mask traced) checks: an all-zero mask gives exactly 0 with
    finite gradients; excluded rows may hold NaN/inf without changing the value or the
    gradients' finiteness; no gradient reaches the teacher (CRD's teacher head excepted)."""
    fn, s, t = _case(name)
    vg = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))

    value, (gs, gt) = vg(s, t, jnp.zeros((B,), jnp.float32))
    assert float(value) == 0.0
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))

    m = jnp.asarray(PARTIAL, jnp.float32)
    clean, _ = vg(s, t, m)
    excluded = jnp.asarray(PARTIAL == 0)
    s_bad = jnp.where(excluded[(...,) + (None,) * (s.ndim - 1)], jnp.nan, s)
    t_bad = jnp.where(excluded[(...,) + (None,) * (t.ndim - 1)], jnp.inf, t)
    value, (gs, gt) = vg(s_bad, t_bad, m)
    np.testing.assert_allclose(value, clean, rtol=1e-6)
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))

    _, (gs, gt) = vg(s, t, jnp.ones((B,), jnp.float32))
    assert np.abs(np.asarray(gs)).max() > 0
    if name == "crd":  # the teacher-side projection head is trained by CRD
        assert np.abs(np.asarray(gt)).max() > 0
    else:
        assert np.all(np.asarray(gt) == 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_inputs_compute_in_float32(name):
    fn, s, t = _case(name)
    s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
    f = jax.jit(lambda a, b: fn(a, b, None))
    got = f(s16, t16)
    assert got.dtype == jnp.float32
    want = f(s16.astype(jnp.float32), t16.astype(jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-6)


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
    return jnp.ones(shape, jnp.float32)


def test_shape_errors_name_both_shapes_and_an_adapter():
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\).*\(2, 4, 4, 8\).*ConvRegressor"):
        F.fitnet_loss(_f(2, 4, 4, 3), _f(2, 4, 4, 8))
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
    init = jax.jit(F.crd_init_memory, static_argnums=(1, 2), static_argnames="normalize")
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
    update = _jit(F.crd_update_memory, momentum=momentum, mask=jnp.asarray(mask))
    new = np.asarray(update(jnp.asarray(mem, jnp.float32), jnp.asarray(idx),
                            jnp.asarray(emb, jnp.float32)))
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-5)
    want = mem.copy()
    for b, i in enumerate(idx):
        if mask[b]:
            want[i] = _np_normalize(momentum * mem[i] + (1 - momentum) * _np_normalize(emb[b]))
    np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new[0], mem[0].astype(np.float32))  # masked example's row


def test_crd_update_memory_under_jit_and_no_gradient():
    mem = jnp.asarray(_np_normalize(_rng(41).normal(size=(8, 3))), jnp.float32)
    emb = jnp.ones((2, 3))
    g = jax.jit(jax.grad(lambda e: jnp.sum(F.crd_update_memory(mem, jnp.array([1, 2]), e))))(
        emb)
    assert np.all(np.asarray(g) == 0)
    new = np.asarray(jax.jit(F.crd_update_memory)(mem, jnp.array([1, 2]), emb))
    np.testing.assert_allclose(new[[1, 2]], _np_normalize(
        0.5 * np.asarray(mem)[[1, 2]] + 0.5 * _np_normalize(np.ones((2, 3)))), rtol=1e-5)


def test_crd_sample_negatives_excludes_the_positive_and_is_uniform():
    n, k = 5, 4000
    idx = jnp.arange(n)
    sample = jax.jit(F.crd_sample_negatives, static_argnums=(2, 3))
    neg = np.asarray(sample(jax.random.PRNGKey(0), idx, n, k))
    assert neg.shape == (n, k) and neg.dtype == np.int32
    assert neg.min() >= 0 and neg.max() < n
    assert not np.any(neg == np.arange(n)[:, None])
    for b in range(n):
        counts = np.bincount(neg[b], minlength=n)
        others = np.delete(counts, b)
        # Expect k / (n - 1) = 1000 each; std ~ 27.
        assert np.all(np.abs(others - k / (n - 1)) < 150), counts
    # Large N, under jit.
    big = sample(jax.random.PRNGKey(1), jnp.array([0, 99, 50]), 100, 16384)
    assert not np.any(np.asarray(big) == np.array([0, 99, 50])[:, None])
    assert int(big.max()) <= 99 and int(big.min()) >= 0


def test_crd_end_to_end_step_decreases_loss():
    """A few SGD steps on the student embedding (fixed Z, teacher bank warmed) lower the loss."""
    n, d, b = 32, 8, 8
    r = _rng(40)
    ms = jnp.asarray(_np_normalize(r.normal(size=(n, d))), jnp.float32)
    mt = jnp.asarray(_np_normalize(r.normal(size=(n, d))), jnp.float32)
    t = jnp.asarray(r.normal(size=(b, d)), jnp.float32)
    s0 = jnp.asarray(r.normal(size=(b, d)), jnp.float32)
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
