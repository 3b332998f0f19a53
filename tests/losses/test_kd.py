"""Hinton KD loss against an independent NumPy computation (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses
from jaxkd.losses import kd


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _np_kd(s, t, temperature, mask):
    """T^2 * masked mean over examples of sum_c p_c (log p_c - log q_c), in float64."""
    p = _np_softmax(t / temperature)
    q = _np_softmax(s / temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    return temperature**2 * (kl * mask).sum() / max(mask.sum(), 1.0)


def _np_kd_grad(s, t, temperature, mask):
    """Closed-form gradient: d/ds [T^2 KL(p||q)] = T (q - p), weighted by mask / sum(mask)."""
    p = _np_softmax(t / temperature)
    q = _np_softmax(s / temperature)
    w = mask / max(mask.sum(), 1.0)
    return temperature * (q - p) * w[:, None]


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_hinton_kd_value_and_grad_match_numpy(temperature):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 10)) * 3
    t = rng.normal(size=(6, 10)) * 3
    mask = np.array([1, 1, 0, 1, 1, 0], np.float64)
    value, grad = jax.value_and_grad(
        lambda x: kd.hinton_kd_loss(x, jnp.asarray(t, jnp.float32), temperature=temperature,
                                    mask=jnp.asarray(mask)))(jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(value, _np_kd(s, t, temperature, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, _np_kd_grad(s, t, temperature, mask), rtol=1e-4, atol=1e-6)


def test_hinton_kd_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 5))
    t = rng.normal(size=(3, 5))
    mask = np.ones(3)
    eps = 1e-6
    fd = np.zeros_like(s)
    for i in np.ndindex(s.shape):
        d = np.zeros_like(s)
        d[i] = eps
        fd[i] = (_np_kd(s + d, t, 2.0, mask) - _np_kd(s - d, t, 2.0, mask)) / (2 * eps)
    g = jax.grad(lambda x: kd.hinton_kd_loss(x, jnp.asarray(t, jnp.float32), temperature=2.0))(
        jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-5)


def test_no_gradient_flows_into_teacher():
    s = jnp.ones((2, 3))
    t = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    g = jax.grad(lambda tt: kd.hinton_kd_loss(s, tt))(t)
    np.testing.assert_array_equal(g, np.zeros((2, 3)))


def test_objective_combines_ce_and_kd_with_alpha():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(4, 7)).astype(np.float32)
    t = rng.normal(size=(4, 7)).astype(np.float32)
    y = np.array([0, 3, 6, 2])
    loss, aux = losses.hinton_kd_objective(s, t, y, temperature=4.0, alpha=0.9)
    ce = -np.log(_np_softmax(s.astype(np.float64))[np.arange(4), y]).mean()
    kd_val = _np_kd(s.astype(np.float64), t.astype(np.float64), 4.0, np.ones(4))
    np.testing.assert_allclose(aux["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["kd"], kd_val, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.1 * ce + 0.9 * kd_val, rtol=1e-5)


def test_all_zero_mask_gives_zero_not_nan():
    s = jnp.zeros((3, 4))
    t = jnp.ones((3, 4))
    y = jnp.zeros((3,), jnp.int32)
    loss, _ = losses.hinton_kd_objective(s, t, y, mask=jnp.zeros(3))
    assert float(loss) == 0.0
    g = jax.grad(lambda x: losses.hinton_kd_objective(x, t, y, mask=jnp.zeros(3))[0])(s)
    assert np.all(np.isfinite(g))


def test_bfloat16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 10)).astype(np.float32)
    t = rng.normal(size=(4, 10)).astype(np.float32)
    v16 = kd.hinton_kd_loss(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert v16.dtype == jnp.float32
    s16 = np.asarray(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32), np.float64)
    t16 = np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(v16, _np_kd(s16, t16, 4.0, np.ones(4)), rtol=1e-4)


def test_teacher_zero_probability_is_finite():
    s = jnp.zeros((1, 3))
    t = jnp.array([[0.0, -jnp.inf, 1.0]])
    assert np.isfinite(float(kd.hinton_kd_loss(s, t, temperature=1.0)))


def test_bad_hyperparameters_and_unknown_loss_name():
    with pytest.raises(ValueError, match="temperature"):
        kd.hinton_kd_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        losses.hinton_kd_objective(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32),
                                   alpha=1.5)
    with pytest.raises(ValueError, match="valid losses: .*hinton"):
        losses.get_loss("hintonn")


# =============================================================================================
# DKD, DIST, DeiT, TinyCLIP, DINO, weighted KD: each against an independent float64 NumPy
# implementation (values) and central finite differences of that implementation (gradients).
# Everything JAX is jitted: one compilation per case keeps the file fast on a CPU.
# =============================================================================================


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _np_kl(p, q):
    """sum_c p_c log(p_c / q_c) over the last axis (float64, p > 0)."""
    return (p * (np.log(p) - np.log(q))).sum(-1)


def _fd_grad(f, x, eps=1e-6):
    """Central finite differences of the float64 scalar function f at x."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _bf16_roundtrip(x):
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


_MASK6 = np.array([1, 0, 1, 1, 0, 1], np.float64)


def _logits(seed, shape, scale=2.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


# ------------------------------------------------------------------------------------- DKD


def _np_dkd(s, t, y, mask, temperature=4.0, alpha=1.0, beta=8.0):
    """DKD written the mdistiller way: binary [p_y, sum of the rest], the target class deleted."""
    per = []
    for b in range(s.shape[0]):
        p = _np_softmax(t[b] / temperature)
        q = _np_softmax(s[b] / temperature)
        others = np.arange(len(p)) != y[b]
        bp = np.array([p[y[b]], p[others].sum()])
        bq = np.array([q[y[b]], q[others].sum()])
        tckd = _np_kl(bp, bq)
        p_hat = _np_softmax(np.delete(t[b], y[b]) / temperature)
        q_hat = _np_softmax(np.delete(s[b], y[b]) / temperature)
        nckd = _np_kl(p_hat, q_hat)
        per.append(alpha * tckd + beta * nckd)
    per = np.array(per)
    return temperature**2 * (per * mask).sum() / max(mask.sum(), 1.0)


@pytest.mark.parametrize("temperature,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_value_and_grad_match_numpy(temperature, alpha, beta):
    s, t = _logits(10, (6, 7)), _logits(11, (6, 7))
    y = np.array([0, 3, 6, 2, 2, 5])
    f = lambda x: kd.dkd_loss(x, _f32(t), labels=jnp.asarray(y), temperature=temperature,
                              alpha=alpha, beta=beta, mask=_f32(_MASK6))
    value, grad = jax.jit(jax.value_and_grad(f))(_f32(s))
    ref = lambda x: _np_dkd(x, t, y, _MASK6, temperature, alpha, beta)
    np.testing.assert_allclose(value, ref(s), rtol=1e-5)
    np.testing.assert_allclose(grad, _fd_grad(ref, s), rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(grad)[_MASK6 == 0] == 0)


def test_dkd_parts_recombine_into_kd_with_weight_one_minus_teacher_target_probability():
    # Per example, KL(p || q) = TCKD + (1 - p_y) * NCKD: DKD with alpha = 1 and beta = 1 - p_y
    # is classical KD. Per-example values come from one-hot masks.
    s, t = _logits(12, (4, 5)), _logits(13, (4, 5))
    y = np.array([1, 0, 4, 2])
    temperature = 3.0
    args = (_f32(s), _f32(t))
    one_hot = jnp.eye(4)

    @jax.jit
    def per_example(s, t):
        part = lambda a, b: jax.vmap(lambda m: kd.dkd_loss(
            s, t, labels=jnp.asarray(y), temperature=temperature, alpha=a, beta=b, mask=m))(
                one_hot)
        hinton = jax.vmap(lambda m: kd.hinton_kd_loss(s, t, temperature=temperature, mask=m))(
            one_hot)
        return part(1.0, 0.0), part(0.0, 1.0), hinton

    tckd, nckd, hinton = per_example(*args)
    p_y = _np_softmax(t / temperature)[np.arange(4), y]
    np.testing.assert_allclose(tckd + (1 - p_y) * nckd, hinton, rtol=1e-5)


def test_dkd_scale_is_a_traceable_warmup_factor():
    s, t = _logits(14, (3, 4)), _logits(15, (3, 4))
    y = jnp.array([0, 1, 2])
    f = jax.jit(lambda step: kd.dkd_loss(_f32(s), _f32(t), labels=y,
                                         scale=jnp.minimum(step / 20.0, 1.0)))
    full = _np_dkd(s, t, np.asarray(y), np.ones(3))
    np.testing.assert_allclose(f(5.0), 0.25 * full, rtol=1e-5)
    np.testing.assert_allclose(f(40.0), full, rtol=1e-5)


def test_dkd_is_stable_for_confident_logits():
    # The non-target mass exp(-150) underflows in float32: log(1 - p_y) from probabilities would
    # be -inf; computed from logits (logsumexp) it stays finite and correct.
    s = jnp.array([[200.0, 0.0, -3.0]])
    t = jnp.array([[150.0, 2.0, -2.0]])
    v, g = jax.jit(jax.value_and_grad(lambda x: kd.dkd_loss(x, t, labels=jnp.array([0]),
                                                            temperature=1.0)))(s)
    assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    np.testing.assert_allclose(v, _np_dkd(np.asarray(s, np.float64), np.asarray(t, np.float64),
                                          [0], np.ones(1), 1.0), rtol=1e-4)


def test_dkd_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        kd.dkd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))


# ------------------------------------------------------------------------------------ DIST


def _np_dist(s, t, mask, temperature=1.0, beta=1.0, gamma=1.0):
    """DIST with np.corrcoef, over the examples with mask 1."""
    p = _np_softmax(s / temperature)
    q = _np_softmax(t / temperature)
    keep = mask > 0
    if not keep.any():
        return 0.0
    inter = 1 - np.mean([np.corrcoef(p[b], q[b])[0, 1] for b in np.flatnonzero(keep)])
    intra = 1 - np.mean([np.corrcoef(p[keep, c], q[keep, c])[0, 1] for c in range(p.shape[1])])
    return temperature**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("temperature,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_value_and_grad_match_numpy(temperature, beta, gamma):
    s, t = _logits(20, (6, 5)), _logits(21, (6, 5))
    f = lambda x: kd.dist_loss(x, _f32(t), temperature=temperature, beta=beta, gamma=gamma,
                               mask=_f32(_MASK6))
    value, grad = jax.jit(jax.value_and_grad(f))(_f32(s))
    ref = lambda x: _np_dist(x, t, _MASK6, temperature, beta, gamma)
    np.testing.assert_allclose(value, ref(s), rtol=1e-5)
    np.testing.assert_allclose(grad, _fd_grad(ref, s), rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(grad)[_MASK6 == 0] == 0)  # masked examples leave the statistics


def test_pearson_is_invariant_to_positive_affine_maps():
    rng = np.random.default_rng(24)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    pearson = jax.jit(kd.pearson_correlation)
    r = pearson(_f32(a), _f32(b))
    np.testing.assert_allclose(r, [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)], rtol=1e-5)
    np.testing.assert_allclose(pearson(_f32(3.0 * a + 2.0), _f32(0.5 * b - 1.0)), r, rtol=1e-5)
    np.testing.assert_allclose(pearson(_f32(-2.0 * a), _f32(b)), -r, rtol=1e-5)
    # Weights 0/1 select entries.
    w = np.array([1, 1, 0, 1, 1, 1, 0, 1.0])
    np.testing.assert_allclose(pearson(_f32(a), _f32(b), weights=_f32(w)),
                               [np.corrcoef(a[i][w > 0], b[i][w > 0])[0, 1] for i in range(3)],
                               rtol=1e-5)
    # A constant vector has correlation 0, with finite gradients.
    g = jax.jit(jax.grad(lambda x: kd.pearson_correlation(x, _f32(b[0]))))(jnp.ones(8))
    assert np.all(np.isfinite(g))


# ------------------------------------------------------------------------------------ DeiT


def _np_deit(cls, dist, t, y, mask, kind, alpha=0.5, temperature=1.0, cw=None, by="label"):
    ce = -_np_log_softmax(cls)[np.arange(len(y)), y]
    ce = (ce * mask).sum() / max(mask.sum(), 1.0)
    if kind == "hard":
        d = -_np_log_softmax(dist)[np.arange(len(y)), t.argmax(-1)]
    else:
        d = temperature**2 * _np_kl(_np_softmax(t / temperature), _np_softmax(dist / temperature))
    w = mask.copy()
    if cw is not None:
        w = w * cw[y if by == "label" else t.argmax(-1)]
    distill = (d * w).sum() / w.sum() if w.sum() > 0 else 0.0
    return (1 - alpha) * ce + alpha * distill, ce, distill


@pytest.mark.parametrize("kind,temperature,weighted", [
    ("hard", 1.0, None), ("soft", 3.0, None), ("hard", 1.0, "teacher"), ("soft", 2.0, "label")])
def test_deit_value_and_grad_match_numpy(kind, temperature, weighted):
    cls, dist, t = _logits(30, (6, 5)), _logits(31, (6, 5)), _logits(32, (6, 5))
    y = np.array([0, 4, 1, 1, 3, 2])
    cw = np.array([0.2, 1.0, 3.0, 0.5, 2.0]) if weighted else None
    by = weighted or "label"

    def f(c, d):
        return kd.deit_distillation_loss(
            c, d, _f32(t), jnp.asarray(y), kind=kind, alpha=0.3, temperature=temperature,
            class_weights=None if cw is None else _f32(cw), weight_by=by, mask=_f32(_MASK6))

    (loss, aux), (g_cls, g_dist) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        _f32(cls), _f32(dist))
    ref = lambda c, d: _np_deit(c, d, t, y, _MASK6, kind, 0.3, temperature, cw, by)
    want, want_ce, want_distill = ref(cls, dist)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(aux["ce"], want_ce, rtol=1e-5)
    np.testing.assert_allclose(aux["distill"], want_distill, rtol=1e-5)
    np.testing.assert_allclose(g_cls, _fd_grad(lambda c: ref(c, dist)[0], cls), rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(g_dist, _fd_grad(lambda d: ref(cls, d)[0], dist), rtol=1e-3,
                               atol=1e-5)


def test_deit_hard_uses_only_the_teacher_argmax():
    cls, dist, t = _f32(_logits(33, (4, 6))), _f32(_logits(34, (4, 6))), _logits(35, (4, 6))
    y = jnp.array([0, 1, 2, 3])
    f = jax.jit(lambda teacher: kd.deit_distillation_loss(cls, dist, teacher, y, kind="hard"))
    loss, aux = f(_f32(t))
    # A different teacher with the same argmax gives the same loss ...
    loss2, _ = f(_f32(10.0 * np.eye(6)[t.argmax(-1)]))
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)
    # ... and the term is the CE of the distillation token against those hard labels.
    want = -_np_log_softmax(np.asarray(dist, np.float64))[np.arange(4), t.argmax(-1)].mean()
    np.testing.assert_allclose(aux["distill"], want, rtol=1e-5)


def test_deit_soft_labels_match_integer_labels_when_one_hot():
    cls, dist, t = _f32(_logits(36, (4, 5))), _f32(_logits(37, (4, 5))), _f32(_logits(38, (4, 5)))
    y = np.array([4, 0, 2, 2])
    cw = _f32([1.0, 2.0, 3.0, 4.0, 5.0])
    f = jax.jit(lambda labels: kd.deit_distillation_loss(cls, dist, t, labels, class_weights=cw))
    np.testing.assert_allclose(f(jnp.asarray(y))[0], f(_f32(np.eye(5)[y]))[0], rtol=1e-6)


# -------------------------------------------------------------------------------- TinyCLIP


def _np_clip(si, st, ti, tt, s_scale, t_scale, mask):
    keep = np.flatnonzero(mask > 0)
    if keep.size == 0:
        return 0.0
    n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    a_s = s_scale * n(si[keep]) @ n(st[keep]).T  # only the counted pairs exist
    a_t = t_scale * n(ti[keep]) @ n(tt[keep]).T
    i2t = -(_np_softmax(a_t) * _np_log_softmax(a_s)).sum(-1).mean()
    t2i = -(_np_softmax(a_t.T) * _np_log_softmax(a_s.T)).sum(-1).mean()
    return 0.5 * (i2t + t2i)


def test_clip_affinity_mimicking_value_and_grad_match_numpy():
    si, st = _logits(40, (6, 4), 1.0), _logits(41, (6, 4), 1.0)
    ti, tt = _logits(42, (6, 3), 1.0), _logits(43, (6, 3), 1.0)

    def f(a, b, scale):
        return kd.clip_affinity_mimicking_loss(a, b, _f32(ti), _f32(tt), student_logit_scale=scale,
                                               teacher_logit_scale=20.0, mask=_f32(_MASK6))

    value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(_f32(si), _f32(st), 5.0)
    ref = lambda a, b, scale: _np_clip(a, b, ti, tt, scale, 20.0, _MASK6)
    np.testing.assert_allclose(value, ref(si, st, 5.0), rtol=1e-5)
    np.testing.assert_allclose(grads[0], _fd_grad(lambda a: ref(a, st, 5.0), si), rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(grads[1], _fd_grad(lambda b: ref(si, b, 5.0), st), rtol=1e-3,
                               atol=1e-5)
    fd_scale = (ref(si, st, 5.0 + 1e-6) - ref(si, st, 5.0 - 1e-6)) / 2e-6
    np.testing.assert_allclose(grads[2], fd_scale, rtol=1e-3)
    # Masked pairs are outside every softmax: their embeddings get no gradient at all.
    assert np.all(np.asarray(grads[0])[_MASK6 == 0] == 0)
    assert np.all(np.asarray(grads[1])[_MASK6 == 0] == 0)
    # Embeddings are normalised inside: rescaling them changes nothing.
    np.testing.assert_allclose(jax.jit(f)(_f32(7.0 * si), _f32(0.1 * st), 5.0), value, rtol=1e-5)


# ------------------------------------------------------------------------------------ DINO


def _np_dino(s, t, c, mask, s_temp=0.1, t_temp=0.04, skip=True):
    total, n = 0.0, 0
    for i in range(t.shape[0]):
        q = _np_softmax((t[i] - c) / t_temp)
        for j in range(s.shape[0]):
            if skip and i == j:
                continue
            ce = -(q * _np_log_softmax(s[j] / s_temp)).sum(-1)
            total += (ce * mask).sum() / max(mask.sum(), 1.0)
            n += 1
    return total / n


@pytest.mark.parametrize("skip", [True, False])
def test_dino_value_and_grad_match_numpy(skip):
    s, t = _logits(50, (3, 6, 4), 0.3), _logits(51, (2, 6, 4), 0.3)
    c = _logits(52, (4,), 0.1)
    f = lambda x: kd.dino_loss(x, _f32(t), _f32(c), skip_same_view=skip, mask=_f32(_MASK6))
    value, grad = jax.jit(jax.value_and_grad(f))(_f32(s))
    ref = lambda x: _np_dino(x, t, c, _MASK6, skip=skip)
    np.testing.assert_allclose(value, ref(s), rtol=1e-5)
    np.testing.assert_allclose(grad, _fd_grad(ref, s), rtol=1e-3, atol=1e-5)


def test_dino_center_update_is_an_ema_of_the_masked_batch_mean():
    t = _logits(53, (2, 6, 4))
    c0 = _logits(54, (4,))
    keep = _MASK6 > 0
    mean = t[:, keep].reshape(-1, 4).mean(0)
    update = jax.jit(kd.dino_center_update, static_argnames="momentum")
    c1 = update(_f32(c0), _f32(t), momentum=0.9, mask=_f32(_MASK6))
    np.testing.assert_allclose(c1, 0.9 * c0 + 0.1 * mean, rtol=1e-5)
    # n updates with the same batch: c_n = m^n c_0 + (1 - m^n) mean.
    c = _f32(c0)
    for _ in range(5):
        c = update(c, _f32(t), momentum=0.8, mask=_f32(_MASK6))
    np.testing.assert_allclose(c, 0.8**5 * c0 + (1 - 0.8**5) * mean, rtol=1e-5)
    # No counted example: the centre is unchanged; momentum 0 jumps to the batch mean.
    np.testing.assert_array_equal(update(_f32(c0), _f32(t), momentum=0.9, mask=jnp.zeros(6)),
                                  _f32(c0))
    np.testing.assert_allclose(update(_f32(c0), _f32(t), momentum=0.0, mask=jnp.ones(6)),
                               t.reshape(-1, 4).mean(0), rtol=1e-5)


def test_dino_view_checks():
    with pytest.raises(ValueError, match="views"):
        kd.dino_loss(jnp.zeros((1, 2, 3)), jnp.zeros((2, 2, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match="pairs"):
        kd.dino_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros(3))


# ----------------------------------------------------------------------- weighted KD, influence


def _np_weighted_kd(s, t, w, mask, temperature=4.0, normalize="weights"):
    kl = _np_kl(_np_softmax(t / temperature), _np_softmax(s / temperature))
    n = (mask * w).sum() if normalize == "weights" else mask.sum()
    return temperature**2 * (kl * mask * w).sum() / n if n > 0 else 0.0


@pytest.mark.parametrize("normalize", ["weights", "count"])
def test_weighted_kd_value_and_grad_match_numpy(normalize):
    s, t = _logits(60, (6, 5)), _logits(61, (6, 5))
    w = np.random.default_rng(62).uniform(0.1, 1.0, size=6)
    f = lambda x: kd.weighted_kd_loss(x, _f32(t), weights=_f32(w), temperature=2.0,
                                      normalize=normalize, mask=_f32(_MASK6))
    value, grad = jax.jit(jax.value_and_grad(f))(_f32(s))
    ref = lambda x: _np_weighted_kd(x, t, w, _MASK6, 2.0, normalize)
    np.testing.assert_allclose(value, ref(s), rtol=1e-5)
    np.testing.assert_allclose(grad, _fd_grad(ref, s), rtol=1e-3, atol=1e-5)
    # Uniform weights give the Hinton term.
    if normalize == "weights":
        same = jax.jit(lambda x: (
            kd.weighted_kd_loss(x, _f32(t), weights=jnp.full((6,), 0.3), mask=_f32(_MASK6)),
            kd.hinton_kd_loss(x, _f32(t), mask=_f32(_MASK6))))(_f32(s))
        np.testing.assert_allclose(*same, rtol=1e-6)


def test_influence_weights_match_numpy():
    rng = np.random.default_rng(65)
    g, g_ref = rng.normal(size=(6, 9)), rng.normal(size=9)
    scores = g @ g_ref
    keep = _MASK6 > 0
    z = (scores - scores[keep].mean()) / scores[keep].std()
    want = np.where(keep, 1 / (1 + np.exp(-2.0 * z)), 0.0)
    weights = jax.jit(kd.influence_weights, static_argnames="scale")
    got = weights(_f32(g), _f32(g_ref), scale=2.0, mask=_f32(_MASK6))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Examples whose gradient is aligned with the reference gradient weigh more.
    assert np.argmax(got) == np.argmax(np.where(keep, scores, -np.inf))
    # Equal scores -> all 0.5; scale 0 -> all 0.5.
    np.testing.assert_allclose(weights(jnp.ones((6, 9)), _f32(g_ref), scale=2.0), 0.5)
    # Equal rows whose float32 mean score misses the score by an ulp (seed 0's first draw: the
    # plain (s - mean) / std gave 0.88 for every example) are equal too.
    rng0 = np.random.default_rng(0)
    row, ref = rng0.normal(size=9).astype(np.float32), rng0.normal(size=9).astype(np.float32)
    np.testing.assert_allclose(weights(jnp.tile(row, (6, 1)), ref, scale=2.0), 0.5)
    np.testing.assert_allclose(weights(jnp.tile(row, (6, 1)), ref, scale=2.0, mask=_f32(_MASK6)),
                               np.where(keep, 0.5, 0.0))
    np.testing.assert_allclose(weights(_f32(g), _f32(g_ref), scale=0.0), 0.5)


# ------------------------------------------------------------ properties shared by all losses


def _all_losses():
    """name -> (f(student_args, teacher_args, mask), student_args, teacher_args)."""
    s, t = _logits(70, (6, 5)), _logits(71, (6, 5))
    y = jnp.array([0, 1, 2, 3, 4, 0])
    emb = [_logits(72 + i, (6, 4), 1.0) for i in range(4)]
    views_s, views_t = _logits(76, (3, 6, 5), 0.3), _logits(77, (2, 6, 5), 0.3)
    return {
        "dkd": (lambda a, b, m: kd.dkd_loss(a[0], b[0], labels=y, mask=m), [s], [t]),
        "dist": (lambda a, b, m: kd.dist_loss(a[0], b[0], mask=m), [s], [t]),
        "deit_hard": (lambda a, b, m: kd.deit_distillation_loss(
            a[0], a[1], b[0], y, kind="hard", mask=m)[0], [s, 0.5 * s], [t]),
        "deit_soft": (lambda a, b, m: kd.deit_distillation_loss(
            a[0], a[1], b[0], y, kind="soft", temperature=2.0, mask=m,
            class_weights=jnp.arange(1.0, 6.0))[0], [s, 0.5 * s], [t]),
        "clip": (lambda a, b, m: kd.clip_affinity_mimicking_loss(
            a[0], a[1], b[0], b[1], student_logit_scale=10.0, teacher_logit_scale=50.0, mask=m),
            emb[:2], emb[2:]),
        "dino": (lambda a, b, m: kd.dino_loss(a[0], b[0], b[1], mask=m),
                 [views_s], [views_t, np.zeros(5)]),
        "weighted_kd": (lambda a, b, m: kd.weighted_kd_loss(
            a[0], b[0], weights=b[1], mask=m), [s], [t, np.linspace(0.1, 1.0, 6)]),
    }


@pytest.mark.parametrize("name", list(_all_losses()))
def test_masks_teacher_gradients_and_bfloat16(name):
    f, a, b = _all_losses()[name]
    value_and_grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    a32, b32 = [_f32(x) for x in a], [_f32(x) for x in b]

    # No gradient flows into any teacher input.
    _, (_, g_teacher) = value_and_grads(a32, b32, _f32(_MASK6))
    for g in g_teacher:
        np.testing.assert_array_equal(g, np.zeros(g.shape))

    # An all-zero mask gives exactly 0 and finite gradients.
    value, (g_student, _) = value_and_grads(a32, b32, jnp.zeros(6))
    assert float(value) == 0.0
    assert all(np.all(np.isfinite(g)) for g in g_student)

    # bf16 inputs: a float32 result equal to float32 arithmetic on the bf16-rounded inputs.
    loss = jax.jit(f)
    v16 = loss([jnp.asarray(x, jnp.bfloat16) for x in a],
               [jnp.asarray(x, jnp.bfloat16) for x in b], _f32(_MASK6))
    assert v16.dtype == jnp.float32
    v32 = loss([_f32(_bf16_roundtrip(x)) for x in a], [_f32(_bf16_roundtrip(x)) for x in b],
               _f32(_MASK6))
    np.testing.assert_allclose(v16, v32, rtol=1e-6)


def test_bf16_value_matches_numpy_on_rounded_inputs():
    s, t = _logits(80, (6, 5)), _logits(81, (6, 5))
    y = np.array([0, 1, 2, 3, 4, 0])
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    dkd, dist = jax.jit(lambda a, b: (kd.dkd_loss(a, b, labels=jnp.asarray(y)),
                                      kd.dist_loss(a, b)))(s16, t16)
    s64, t64 = _bf16_roundtrip(s), _bf16_roundtrip(t)
    np.testing.assert_allclose(dkd, _np_dkd(s64, t64, y, np.ones(6)), rtol=1e-5)
    np.testing.assert_allclose(dist, _np_dist(s64, t64, np.ones(6)), rtol=1e-5)


def test_uniform_classification_signature():
    s, t = _f32(_logits(82, (4, 5))), _f32(_logits(83, (4, 5)))
    y, m = jnp.array([0, 1, 2, 3]), jnp.array([1.0, 1.0, 0.0, 1.0])

    @jax.jit
    def values(s, t):
        return [fn(s, t, labels=labels, temperature=2.0, mask=m, **hp)
                for fn, labels, hp in ((kd.dkd_loss, y, {}), (kd.dist_loss, y, {}),
                                       (kd.dist_loss, None, {}),
                                       (kd.weighted_kd_loss, y, {"weights": jnp.ones(4)}))]

    out = values(s, t)
    assert all(v.shape == () and v.dtype == jnp.float32 for v in out)
    assert float(out[1]) == float(out[2])  # DIST ignores labels


_z = jnp.zeros((2, 3))
_y = jnp.zeros((2,), jnp.int32)


@pytest.mark.parametrize("call,name", [
    (lambda: kd.dkd_loss(_z, _z, labels=_y, temperature=0.0), "temperature"),
    (lambda: kd.dkd_loss(_z, _z, labels=_y, alpha=-1.0), "alpha"),
    (lambda: kd.dkd_loss(_z, _z, labels=_y, beta=-1.0), "beta"),
    (lambda: kd.dist_loss(_z, _z, temperature=-1.0), "temperature"),
    (lambda: kd.dist_loss(_z, _z, beta=-1.0), "beta"),
    (lambda: kd.dist_loss(_z, _z, gamma=-1.0), "gamma"),
    (lambda: kd.deit_distillation_loss(_z, _z, _z, _y, kind="medium"), "kind"),
    (lambda: kd.deit_distillation_loss(_z, _z, _z, _y, alpha=1.5), "alpha"),
    (lambda: kd.deit_distillation_loss(_z, _z, _z, _y, kind="soft", temperature=0.0),
     "temperature"),
    (lambda: kd.deit_distillation_loss(_z, _z, _z, _y, weight_by="student"), "weight_by"),
    (lambda: kd.clip_affinity_mimicking_loss(_z, _z, _z, _z, student_logit_scale=0.0,
                                             teacher_logit_scale=1.0), "student_logit_scale"),
    (lambda: kd.clip_affinity_mimicking_loss(_z, _z, _z, _z, student_logit_scale=1.0,
                                             teacher_logit_scale=-1.0), "teacher_logit_scale"),
    (lambda: kd.dino_loss(jnp.zeros((2, 2, 3)), jnp.zeros((2, 2, 3)), jnp.zeros(3),
                          student_temp=0.0), "student_temp"),
    (lambda: kd.dino_loss(jnp.zeros((2, 2, 3)), jnp.zeros((2, 2, 3)), jnp.zeros(3),
                          teacher_temp=0.0), "teacher_temp"),
    (lambda: kd.dino_center_update(jnp.zeros(3), _z, momentum=1.5), "momentum"),
    (lambda: kd.weighted_kd_loss(_z, _z, weights=jnp.ones(2), temperature=0.0), "temperature"),
    (lambda: kd.weighted_kd_loss(_z, _z, weights=jnp.ones(2), normalize="mean"), "normalize"),
    (lambda: kd.influence_weights(_z, jnp.zeros(3), scale=-1.0), "scale"),
])
def test_bad_hyperparameters_raise_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()
