"""TrigFlow, sCM and the samplers against independent computations (NumPy formulas, central
differences, explicit Jacobians, closed-form Gaussian flows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.diffusion import samplers, scm, trigflow
from jaxkd.models.denoisers import AdaptiveWeight, MLPDenoiser

SD = 0.5  # sigma_d
KW = dict(sigma_d=SD, p_mean=-0.8, p_std=1.6)
RNG = np.random.default_rng(0)
X0 = jnp.asarray(RNG.normal(size=(6, 2)) * 0.7, jnp.float32)
NET = MLPDenoiser(hidden=32, depth=2, emb_dim=16)
P_STUDENT = NET.init(jax.random.key(1), X0, jnp.ones(6))
P_TEACHER = NET.init(jax.random.key(2), X0, jnp.ones(6))
WNET = AdaptiveWeight(emb_dim=16)
# A weighting network with a non-zero output (its init is exactly zero).
P_W = jax.tree.map(lambda a: a + 0.1, WNET.init(jax.random.key(3), jnp.ones(6)))


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    """These tests check formulas to float32 tolerances, so their matmuls and convolutions run
    at full float32 precision: on an NVIDIA GPU JAX's default lets XLA use TF32 (about 3 decimal
    digits), and on an H200 (2026-11-28) the JVP-vs-differences, analytic-gradient and UNet JVP
    checks missed their tolerances by that alone (they pass at "highest"). On CPU this is the
    default already."""
    with jax.default_matmul_precision("highest"):
        yield


def _fn(params):
    return lambda x, t: NET.apply(params, x, t)


def test_diffusion_loss_matches_numpy():
    key = jax.random.key(5)
    linear = lambda x, t: 0.3 * x + t[:, None]  # a "network" NumPy can evaluate
    got = trigflow.diffusion_loss(linear, X0, key, **KW)
    # The documented draws: t lognormal in sigma from the first key, z ~ N(0, sd^2) from the second.
    k_t, k_z = jax.random.split(key)
    n = np.asarray(jax.random.normal(k_t, (6,)), np.float64)
    t = np.arctan(np.exp(KW["p_mean"] + KW["p_std"] * n) / SD)
    z = SD * np.asarray(jax.random.normal(k_z, (6, 2)), np.float64)
    x0 = np.asarray(X0, np.float64)
    x_t = np.cos(t)[:, None] * x0 + np.sin(t)[:, None] * z
    v_t = np.cos(t)[:, None] * z - np.sin(t)[:, None] * x0
    want = np.mean((SD * (0.3 * x_t / SD + t[:, None]) - v_t) ** 2, axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_jvp_time_derivative_matches_central_differences():
    terms = scm.scm_terms(_fn(P_STUDENT), X0, jax.random.key(7), r=1.0, teacher=_fn(P_TEACHER),
                          **KW)
    t, x_t = np.asarray(terms["t"], np.float64), np.asarray(terms["x_t"], np.float64)
    # The sCD tangent is the teacher's velocity at x_t.
    want_dx = SD * np.asarray(NET.apply(P_TEACHER, terms["x_t"] / SD, terms["t"]))
    np.testing.assert_allclose(terms["dxt_dt"], want_dx, rtol=1e-5, atol=1e-6)
    # d/dt F(x_t / sd, t) along the ODE, by central differences, times cos t sin t.
    h = 1e-2
    f = lambda s: np.asarray(NET.apply(P_STUDENT, jnp.asarray((x_t + s * want_dx) / SD,
                                                               jnp.float32),
                                       jnp.asarray(t + s, jnp.float32)), np.float64)
    fd = (f(h) - f(-h)) / (2 * h) * (np.cos(t) * np.sin(t))[:, None]
    np.testing.assert_allclose(terms["dF_dt"], fd, rtol=2e-3, atol=2e-4)
    assert np.abs(fd).max() > 1e-3  # a derivative worth checking
    np.testing.assert_allclose(terms["F_minus"], f(0.0), rtol=1e-5, atol=1e-6)


def test_tangent_target_is_the_cards_formula():
    f_m, df, dx, x_t = (RNG.normal(size=(4, 3)) for _ in range(4))
    t = RNG.uniform(0.1, 1.5, size=4)
    r = 0.4
    got = scm.tangent_target(*(jnp.asarray(a, jnp.float32) for a in (f_m, df, dx, x_t)),
                             jnp.asarray(t, jnp.float32), sigma_d=SD, r=r)
    c, s = np.cos(t)[:, None], np.sin(t)[:, None]
    want = -c ** 2 * (SD * f_m - dx) - r * (c * s * x_t + SD * df)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    normed = scm.normalize_tangent(jnp.asarray(want, jnp.float32))
    np.testing.assert_allclose(normed, want / (np.linalg.norm(want, axis=-1, keepdims=True) + 0.1),
                               rtol=1e-5)


@pytest.mark.parametrize("distill", [True, False])
def test_scm_gradient_is_the_analytic_update_direction(distill):
    """grad_theta mean L = -2/B sum_b e^{w_b} / D g_b^T dF_b/dtheta (F - F^- = 0), and
    grad_phi mean L = 1/B sum_b (e^{w_b} |g_b|^2 / D - 1) dw_b/dphi."""
    key, r = jax.random.key(11), 0.7
    teacher = _fn(P_TEACHER) if distill else None

    def loss(p_student, p_w):
        per, _ = scm.scm_loss(_fn(p_student), lambda t: WNET.apply(p_w, t), X0, key, r=r,
                              teacher=teacher, **KW)
        return jnp.mean(per)

    g_theta, g_phi = jax.grad(loss, argnums=(0, 1))(P_STUDENT, P_W)
    terms = scm.scm_terms(_fn(P_STUDENT), X0, key, r=r, teacher=teacher, **KW)
    t, x_t, dx = (np.asarray(terms[k], np.float64) for k in ("t", "x_t", "dxt_dt"))
    # g from independent pieces: F^- by a plain forward, dF/dt by central differences.
    fwd = lambda xx, tt: np.asarray(NET.apply(P_STUDENT, jnp.asarray(xx / SD, jnp.float32),
                                              jnp.asarray(tt, jnp.float32)), np.float64)
    h = 1e-2
    cs = (np.cos(t) * np.sin(t))[:, None]
    df = (fwd(x_t + h * dx, t + h) - fwd(x_t - h * dx, t - h)) / (2 * h) * cs
    c = np.cos(t)[:, None]
    g = -c ** 2 * (SD * fwd(x_t, t) - dx) - r * (cs * x_t + SD * df)
    g = g / (np.linalg.norm(g, axis=-1, keepdims=True) + 0.1)
    w = np.asarray(WNET.apply(P_W, terms["t"]), np.float64)
    assert np.abs(w).max() > 1e-2
    b, d = X0.shape
    # dF_b / dtheta for every example: an explicit forward-mode Jacobian.
    jac = jax.jacfwd(lambda p: NET.apply(p, terms["x_t"] / SD, terms["t"]))(P_STUDENT)
    want_theta = jax.tree.map(
        lambda j: np.einsum("b,bd,bd...->...", -2 * np.exp(w) / d / b, g, np.asarray(j)), jac)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=5e-3, atol=5e-5), g_theta,
                 want_theta)
    jw = jax.jacfwd(lambda p: WNET.apply(p, terms["t"]))(P_W)
    coef = (np.exp(w) * np.sum(g ** 2, -1) / d - 1.0) / b
    want_phi = jax.tree.map(lambda j: np.einsum("b,b...->...", coef, np.asarray(j)), jw)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=5e-3, atol=1e-5), g_phi,
                 want_phi)


# ---------------------------------------------------------------------------- samplers
S_DATA = 1.3  # data ~ N(0, S_DATA^2 I): the exact velocity and ODE map are known


def _var(t):
    return np.cos(t) ** 2 * S_DATA ** 2 + np.sin(t) ** 2 * SD ** 2


def _exact_velocity(x, t):
    """E[v_t | x_t] / sd for Gaussian data: Cov(v_t, x_t) / Var(x_t) x_t / sd."""
    t2 = t[:, None]
    cov = jnp.cos(t2) * jnp.sin(t2) * (SD ** 2 - S_DATA ** 2)
    var = jnp.cos(t2) ** 2 * S_DATA ** 2 + jnp.sin(t2) ** 2 * SD ** 2
    return cov / var * (x * SD) / SD


def test_ode_samplers_follow_the_exact_gaussian_flow():
    times = samplers.karras_times(64, SD)
    assert times[0] == pytest.approx(np.arctan(80 / SD)) and times[-1] == 0.0
    assert np.all(np.diff(times) < 0)
    z = jnp.asarray(RNG.normal(size=(50, 2)) * SD, jnp.float32)
    # The linear ODE scales x_t with the marginal std: x_0 = x_{t0} S_DATA / std(t0).
    want = np.asarray(z) * S_DATA / np.sqrt(_var(times[0]))
    for method, tol in (("heun", 1e-3), ("euler", 3e-2), ("ddim", 3e-2)):
        got = samplers.ode_sample(_exact_velocity, z, times, sigma_d=SD, method=method)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=method)
    # One DDIM step returns E[x0 | x_T], nearly 0: the few-step teacher is far off.
    one = samplers.ode_sample(_exact_velocity, z, samplers.karras_times(1, SD), sigma_d=SD,
                              method="ddim")
    assert np.abs(np.asarray(one)).max() < 0.05 * np.abs(want).max()
    with pytest.raises(ValueError, match="at least one step"):
        samplers.karras_times(0, SD)
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.ode_sample(_exact_velocity, z, times, sigma_d=SD, method="rk4")


def test_one_consistency_step_of_the_exact_model_equals_the_ode():
    # The exact consistency function maps x_t to x_t S_DATA / std(t); the F that gives it.
    def consistency_velocity(x, t):
        t2 = t[:, None]
        ratio = S_DATA / jnp.sqrt(jnp.cos(t2) ** 2 * S_DATA ** 2 + jnp.sin(t2) ** 2 * SD ** 2)
        return (jnp.cos(t2) - ratio) * (x * SD) / (jnp.sin(t2) * SD)

    times = samplers.karras_times(64, SD)
    z = jnp.asarray(RNG.normal(size=(50, 2)) * SD, jnp.float32)
    ode = samplers.ode_sample(_exact_velocity, z, times, sigma_d=SD, method="heun")
    one = samplers.consistency_sample(consistency_velocity, z, times[:1], jax.random.key(0),
                                      sigma_d=SD)
    np.testing.assert_allclose(one, ode, rtol=2e-3, atol=2e-3)
    # Two steps: re-noised to t = 1.1 and mapped again (still exact for the exact model).
    two = samplers.consistency_sample(consistency_velocity, z, [times[0], 1.1],
                                      jax.random.key(0), sigma_d=SD)
    assert np.std(np.asarray(two)) == pytest.approx(S_DATA, rel=0.25)


def test_guidance_combines_the_two_velocities():
    cond = lambda x, t: 2.0 * x
    uncond = lambda x, t: x + 1.0
    x, t = jnp.ones((3, 2)), jnp.ones(3)
    np.testing.assert_allclose(samplers.guided(cond, uncond, 3.0)(x, t),
                               (1 + 1.0) + 3.0 * (2.0 - 2.0) * np.ones((3, 2)))
    np.testing.assert_allclose(samplers.guided(cond, uncond, 1.0)(x, t), cond(x, t))
    xr = jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32)
    np.testing.assert_allclose(samplers.guided(cond, uncond, 2.5)(xr, t),
                               (xr + 1) + 2.5 * (2 * xr - xr - 1), rtol=1e-6)
    # One scale per example (guided distillation), on images [B, H, W, C].
    xi = jnp.asarray(RNG.normal(size=(3, 4, 4, 1)), jnp.float32)
    w = np.array([1.0, 2.0, 3.5], np.float32)
    expect = (np.asarray(xi) + 1) + w[:, None, None, None] * (np.asarray(xi) - 1)
    np.testing.assert_allclose(samplers.guided(cond, uncond, jnp.asarray(w))(xi, t), expect,
                               rtol=1e-6, atol=1e-6)


def test_a_layer_without_forward_mode_is_named():
    import flax.linen as nn  # pylint: disable=g-import-not-at-top

    @jax.custom_vjp
    def fused(x):
        return jnp.tanh(x)

    fused.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g / jnp.cosh(x) ** 2,))

    class FusedBlock(nn.Module):
        @nn.compact
        def __call__(self, h):
            return fused(nn.Dense(4)(h))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            h = FusedBlock(name="attn")(jnp.concatenate([x, t[:, None]], -1))
            return nn.Dense(2)(h)

    net = Net()
    params = net.init(jax.random.key(0), X0, jnp.ones(6))
    with pytest.raises(scm.ForwardModeError, match=r"FusedBlock at 'attn'.*custom_jvp"):
        scm.scm_terms(lambda x, t: net.apply(params, x, t), X0, jax.random.key(0), r=1.0, **KW)


def test_the_unet_is_jvp_able_and_class_conditional():
    from jaxkd.models.denoisers import UNet  # pylint: disable=g-import-not-at-top

    net = UNet(channels=8, channel_mult=(1,), emb_dim=16, num_classes=3)
    x = jnp.asarray(RNG.normal(size=(2, 8, 8, 1)), jnp.float32)
    labels = jnp.array([0, 3])  # 3: the null class
    params = net.init(jax.random.key(0), x, jnp.ones(2), labels)
    # Non-zero output weights (the output conv starts at zero).
    params = jax.tree.map(lambda a: a + 0.05, params)
    fn = lambda xx, tt: net.apply(params, xx, tt, labels)
    out, tangent = jax.jvp(fn, (x, jnp.full(2, 0.7)), (jnp.zeros_like(x), jnp.ones(2)))
    h = 1e-2
    fd = (fn(x, jnp.full(2, 0.7 + h)) - fn(x, jnp.full(2, 0.7 - h))) / (2 * h)
    np.testing.assert_allclose(tangent, fd, rtol=2e-2, atol=2e-3)
    assert out.shape == x.shape
    other = net.apply(params, x, jnp.ones(2), jnp.array([1, 3]))
    assert not np.allclose(other[0], net.apply(params, x, jnp.ones(2), labels)[0])
    two_level = UNet(channels=8, channel_mult=(1, 2), emb_dim=16, num_classes=3)
    with pytest.raises(ValueError, match="divisible"):
        two_level.init(jax.random.key(0), jnp.ones((1, 7, 7, 1)), jnp.ones(1), labels[:1])


def test_trajectory_points_lie_on_the_teachers_ddim_path_and_train_scd():
    from jaxkd.diffusion import train  # pylint: disable=g-import-not-at-top

    teacher = _fn(P_TEACHER)
    z = jnp.asarray(RNG.normal(size=(3, 2)) * SD, jnp.float32)
    grid = jnp.asarray(samplers.karras_times(4, SD))
    xs, ts = train.trajectory_points(teacher, z, grid, SD)
    assert xs.shape == (12, 2) and ts.shape == (12,)
    # Trajectory k's point at grid time i is i DDIM steps from z.
    for i in range(4):
        want = samplers.ode_sample(teacher, z, grid[:i + 1], sigma_d=SD, method="ddim")
        np.testing.assert_allclose(xs[3 * i:3 * i + 3], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ts[3 * i:3 * i + 3], grid[i])
    terms = scm.scm_terms(_fn(P_STUDENT), X0[:3], jax.random.key(0), r=1.0, teacher=teacher,
                          points=(xs[:3], ts[:3]), **KW)
    np.testing.assert_array_equal(terms["x_t"], xs[:3])
    with pytest.raises(ValueError, match="need a teacher"):
        scm.scm_terms(_fn(P_STUDENT), X0[:3], jax.random.key(0), r=1.0, points=(xs[:3], ts[:3]),
                      **KW)
