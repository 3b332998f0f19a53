"""Toy 2-D distributions and sample metrics against independent NumPy/SciPy computations."""

import math

import jax
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import logsumexp

from jaxkd.diffusion import metrics, toy

KEY = jax.random.key(0)
N = 1000  # one sample size throughout, so compiled programs are reused across tests


def _grid(lo, hi, num):
    g = np.linspace(lo, hi, num)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), g[1] - g[0]


MOON_SCALE = 1 / math.sqrt((21 / 16 - 1 / math.pi) / 2)  # the documented map's scale


def _moon_arc(k, t):
    """sklearn's make_moons arcs (k = 0: (cos t, sin t); k = 1: (1 - cos t, 1/2 - sin t)), t in
    [0, pi], through the documented map ``MOON_SCALE * (a - (1/2, 1/4))``; ``[..., 2]``."""
    a = np.stack([np.cos(t), np.sin(t)] if k == 0 else [1 - np.cos(t), 0.5 - np.sin(t)], -1)
    return MOON_SCALE * (a - np.array([0.5, 0.25]))


@pytest.mark.parametrize("name", sorted(toy.DISTRIBUTIONS))
def test_every_registered_distribution_builds_samples_and_scores(name):
    dist = toy.get(name)
    assert dist.name == name
    x = jax.jit(lambda k: dist.sample(k, N))(KEY)  # also traceable inside other jitted code
    assert x.shape == (N, 2) and x.dtype == np.float32
    logp, ids = dist.log_density(x), dist.assign(x)
    assert logp.shape == (N,) and np.all(np.isfinite(logp))
    assert ids.shape == (N,) and ids.dtype == np.int32
    assert dist.mode_centers().shape == (dist.num_modes, 2)
    # A mode centre belongs to its own mode.
    np.testing.assert_array_equal(dist.assign(dist.mode_centers()), np.arange(dist.num_modes))


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="checkerboard.*moons.*ring"):
        toy.get("spiral")


@pytest.mark.parametrize("fields", [{}, {"num_modes": 5, "radius": 1.0, "std": 0.4}])
def test_ring_log_density_matches_scipy_mixture(fields):
    dist = toy.Ring(**fields)
    m, r, s = dist.num_modes, dist.radius, dist.std
    x = np.random.default_rng(0).uniform(-3, 3, (200, 2))
    comps = [stats.multivariate_normal([r * math.cos(2 * math.pi * k / m),
                                        r * math.sin(2 * math.pi * k / m)], s**2).logpdf(x)
             for k in range(m)]
    expected = logsumexp(np.stack(comps), axis=0) - math.log(m)
    np.testing.assert_allclose(dist.log_density(x), expected, rtol=1e-5, atol=1e-4)


def test_ring_true_samples_score_minus_entropy():
    dist = toy.Ring()
    x = dist.sample(KEY, 4000)
    entropy = math.log(8) + math.log(2 * math.pi * math.e * dist.std**2)  # separated modes
    # Per-sample log p = const - |eps|^2 / 2 has std 1, so the mean's standard error is 0.016.
    assert abs(float(metrics.mean_log_density(x, dist)) + entropy) < 0.08


@pytest.mark.parametrize("name", ["ring", "moons"])
def test_density_integrates_to_one(name):
    dist = toy.get(name)
    x, h = _grid(-4.5, 4.5, 301)  # spacing 0.3 std: a Riemann sum of a Gaussian is very exact
    mass = float(np.sum(np.exp(np.asarray(dist.log_density(x), np.float64))) * h**2)
    assert abs(mass - 1) < 1e-3


def test_checkerboard_samples_fill_dark_squares_evenly():
    dist = toy.Checkerboard()
    x = np.asarray(dist.sample(KEY, 8000))
    i, j = np.floor(x[:, 0] + 2).astype(int), np.floor(x[:, 1] + 2).astype(int)
    assert np.all((i >= 0) & (i < 4) & (j >= 0) & (j < 4)) and np.all((i + j) % 2 == 0)
    dark = [c for c in range(16) if (c % 4 + c // 4) % 2 == 0]  # cell ids 4 j + i
    np.testing.assert_allclose(np.bincount(4 * j + i, minlength=16)[dark], 1000, rtol=0.12)
    frac = x - np.floor(x)  # uniform within a square: mean 1/2, variance 1/12 per axis
    np.testing.assert_allclose(frac.mean(0), 0.5, atol=0.02)
    np.testing.assert_allclose(frac.var(0), 1 / 12, atol=0.005)
    np.testing.assert_allclose(dist.log_density(x), -math.log(8), rtol=1e-6)
    np.testing.assert_array_equal(dist.assign(x), np.searchsorted(dark, 4 * j + i))


def test_checkerboard_log_density_on_grid():
    dist = toy.Checkerboard(outside_log_density=-7.0)
    x, _ = _grid(-2.95, 2.95, 60)  # never on a cell edge
    i, j = np.floor(x[:, 0] + 2), np.floor(x[:, 1] + 2)
    inside = (np.abs(x) < 2).all(-1) & ((i + j) % 2 == 0)
    expected = np.where(inside, -math.log(8), -7.0)
    np.testing.assert_allclose(dist.log_density(x), expected, rtol=1e-6)


def _moons_log_density_scipy(x, sigma):
    """Adaptive quadrature (scipy ``quad``) in float64 over each arc's angle, point by point:
    ``log(1/2 sum_k 1/pi int_0^pi N(x; arc_k(t), sigma^2 I) dt)``."""
    out = []
    for p in x.tolist():
        log_terms = []
        for k in range(2):
            def d2(t):  # scalar _moon_arc, in plain floats for speed
                c, s = math.cos(t), math.sin(t)
                ax, ay = (c, s) if k == 0 else (1 - c, 0.5 - s)
                dx, dy = p[0] - MOON_SCALE * (ax - 0.5), p[1] - MOON_SCALE * (ay - 0.25)
                return dx**2 + dy**2

            t_dense = np.linspace(0, np.pi, 2001)
            t_min = t_dense[np.argmin(np.sum((p - _moon_arc(k, t_dense)) ** 2, -1))]
            d2_min = d2(t_min)  # factor out the peak so the integrand is O(1)
            val, _ = integrate.quad(lambda t: math.exp(-(d2(t) - d2_min) / (2 * sigma**2)), 0,
                                    np.pi, points=[t_min], limit=200, epsabs=0, epsrel=1e-10)
            log_terms.append(math.log(val) - d2_min / (2 * sigma**2))
        log_norm = math.log(2 * math.pi) + math.log(2 * math.pi * sigma**2)
        out.append(logsumexp(log_terms) - log_norm)
    return np.array(out)


@pytest.mark.parametrize("sigma", [0.1, 0.05])
def test_moons_quadrature_matches_adaptive_scipy_quadrature(sigma):
    dist = toy.Moons(sigma=sigma)
    grid, _ = _grid(-4, 4, 17)
    x = np.concatenate([grid, np.asarray(dist.sample(KEY, 100))])
    expected = _moons_log_density_scipy(x.astype(np.float64), sigma)
    got = np.asarray(dist.log_density(x), np.float64)
    near = expected > -50
    np.testing.assert_allclose(got[near], expected[near], atol=1e-4)  # the density to rtol 1e-4
    np.testing.assert_allclose(got, expected, rtol=2e-5)  # far out: float32 rounding of log p


def test_moons_affine_map_and_arc_assignment():
    dist = toy.Moons(sigma=1e-4)
    x = np.asarray(dist.sample(KEY, 10000))
    np.testing.assert_allclose(x.mean(0), 0, atol=0.04)
    assert abs(x.var(0).mean() - 1) < 0.03
    for k in range(2):
        arc = _moon_arc(k, np.linspace(0, np.pi, 50))
        np.testing.assert_array_equal(toy.Moons().assign(arc), k)
    # Exact arc distance vs brute force over a dense polyline of each arc.
    q = np.random.default_rng(1).uniform(-3, 3, (100, 2))
    t = np.linspace(0, np.pi, 20001)
    brute = [np.sqrt(((q[:, None] - _moon_arc(k, t)[None]) ** 2).sum(-1)).min(1) for k in range(2)]
    np.testing.assert_allclose(dist.arc_distance(q), np.stack(brute, -1), atol=1e-4)


def _w2_squared_numpy(u, v):
    """Exact 1-D W2^2: repeat each sorted sample so both sets have lcm(n, m) equal-weight atoms."""
    n, m = len(u), len(v)
    ell = math.lcm(n, m)
    return np.mean((np.repeat(np.sort(u), ell // n) - np.repeat(np.sort(v), ell // m)) ** 2)


@pytest.mark.parametrize("n,m", [(40, 25), (7, 13)])
def test_wasserstein_1d_matches_numpy(n, m):
    rng = np.random.default_rng(n + m)
    u, v = rng.normal(size=n), rng.exponential(size=m) + 0.3
    np.testing.assert_allclose(metrics.wasserstein_1d_squared(u, v), _w2_squared_numpy(u, v),
                               rtol=1e-5)


def test_sliced_wasserstein_closed_forms():
    x = np.asarray(toy.Moons().sample(KEY, N))[:200]
    assert float(metrics.sliced_wasserstein(x, x, KEY, num_projections=2048)) < 1e-6
    # A translation by v shifts each projection by v . theta: SW2 = sqrt(mean (v . theta)^2)
    # -> |v| / sqrt(2) in 2-D (MC error of the mean of cos^2 with 2048 directions: 1.6%, so 0.8%
    # on SW2).
    v = np.array([0.3, -0.4])
    swd = float(metrics.sliced_wasserstein(x, x + v, KEY, num_projections=2048))
    np.testing.assert_allclose(swd, 0.5 / math.sqrt(2), rtol=0.03)
    # In 1-D every direction is +-1, so SW2 is W2 (here with unequal sizes).
    rng = np.random.default_rng(0)
    u, w = rng.normal(size=(30, 1)), rng.normal(size=(45, 1)) + 0.2
    np.testing.assert_allclose(metrics.sliced_wasserstein(u, w, KEY, num_projections=8),
                               math.sqrt(_w2_squared_numpy(u[:, 0], w[:, 0])), rtol=1e-5)


def _mmd_numpy(x, y, bandwidths):
    def k(a, b):
        return sum(math.exp(-np.sum((a - b) ** 2) / (2 * h**2)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_double_loop_and_separates_distributions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(6, 2)) + 0.5
    bandwidths = (0.3, 1.5)
    np.testing.assert_allclose(metrics.mmd(x, y, bandwidths, block=4),
                               _mmd_numpy(x, y, bandwidths), rtol=1e-4, atol=1e-6)
    ring = toy.Ring()
    a, b = ring.sample(jax.random.key(1), N), ring.sample(jax.random.key(2), N)
    wrong = b + 0.17 * jax.random.normal(KEY, b.shape)  # mode std 0.2 instead of 0.1
    same, diff = float(metrics.mmd(a, b)), float(metrics.mmd(a, wrong))
    assert abs(same) < 0.01 and diff > 0.02, (same, diff)  # seeds: |same| <~ 0.005, diff ~ 0.03


def test_mode_coverage_rules():
    for name in toy.DISTRIBUTIONS:
        dist = toy.get(name)
        x = dist.sample(KEY, N)
        assert float(metrics.mode_coverage(x, dist)) == 1.0
        assert float(metrics.off_mode_fraction(x, dist)) < 0.01
    ring = toy.Ring()
    one_mode = np.asarray(ring.mode_centers()[3] + ring.std * jax.random.normal(KEY, (N, 2)))
    assert float(metrics.mode_coverage(one_mode, ring)) == 0.125
    # min_fraction = 1/32 of 1000 = 31.25 points: 32 in a second mode cover it, 31 do not.
    for extra, expected in [(32, 0.25), (31, 0.125)]:
        x = one_mode.copy()
        x[:extra] = ring.mode_centers()[0]
        assert float(metrics.mode_coverage(x, ring)) == expected
    x = one_mode.copy()
    x[: N // 2] = 10.0
    assert float(metrics.off_mode_fraction(x, ring)) == 0.5


@pytest.mark.parametrize("name", sorted(toy.DISTRIBUTIONS))
def test_true_samples_score_higher_log_density_than_a_slightly_wrong_distribution(name):
    dist = toy.get(name)
    x = dist.sample(KEY, N)
    blurred = x + 0.08 * jax.random.normal(jax.random.key(1), x.shape)  # ring std 0.1 -> 0.128
    gap = float(metrics.mean_log_density(x, dist) - metrics.mean_log_density(blurred, dist))
    assert gap > 0.2, gap


def test_evaluate_samples_returns_floats_that_rank_good_above_bad():
    dist = toy.Ring()
    good = dist.sample(jax.random.key(1), N)
    bad = 0.75 * good  # radius 1.5, std 0.075: every mode misplaced
    r_good = metrics.evaluate_samples(good, dist, jax.random.key(2), reference_n=N)
    r_bad = metrics.evaluate_samples(bad, dist, jax.random.key(2), reference_n=N)
    assert {"swd", "mmd", "logdensity", "mode_coverage"} <= set(r_good)
    assert all(type(v) is float for v in r_good.values())
    assert r_good["swd"] < r_bad["swd"] and r_good["mmd"] < r_bad["mmd"]
    assert r_good["logdensity"] > r_bad["logdensity"]
    assert r_good["mode_coverage"] == 1.0 and r_bad["mode_coverage"] == 0.0  # 0.5 > 4 std off


def test_ring_mode_w2_matches_scipy_gaussian_w2_and_truncated_reference():
    from scipy.linalg import sqrtm
    ring = toy.Ring()
    rng = np.random.default_rng(3)
    centres, m = ring.mode_centers(), ring.num_modes
    # Modes 0-5 distorted (anisotropic scale, shear, shift, unequal counts), 6 has one sample,
    # 7 none, plus a few points between modes.
    parts = []
    for k in range(6):
        a = np.array([[1.0 + 0.1 * k, 0.2], [0.0, 0.8]]) * ring.std
        z = rng.normal(size=(400 + 100 * k, 2))
        z = z[np.linalg.norm(z @ a.T, axis=1) < 3.5 * ring.std]  # stay inside the 4-std disc
        parts.append(centres[k] + 0.01 * k + z @ a.T)
    parts += [centres[6][None] + 0.01, np.array([[0.0, 0.0], [0.1, -0.2]])]
    x = np.concatenate(parts).astype(np.float32)
    got = metrics.ring_mode_w2(x, ring)
    a8 = 8.0
    s2 = ring.std ** 2 * (1 - (1 + a8) * np.exp(-a8)) / (1 - np.exp(-a8))
    want, counts = [], np.zeros(m)
    shape = np.full((m, 3), np.nan)  # radial std, tangential std, radial offset
    for k in range(m):
        pts = x[np.argmin(np.linalg.norm(x[:, None] - centres[None], axis=-1), 1) == k]
        pts = pts[np.linalg.norm(pts - centres[k], axis=1) <= 4 * ring.std]
        counts[k] = len(pts)
        if len(pts) < 2:
            want.append(np.nan)
            continue
        mu = pts.mean(0, dtype=np.float64)
        cov = np.cov(pts.T.astype(np.float64), bias=True)
        angle = 2 * np.pi * k / m
        r_dir = pts.astype(np.float64) @ np.array([np.cos(angle), np.sin(angle)])
        t_dir = pts.astype(np.float64) @ np.array([-np.sin(angle), np.cos(angle)])
        shape[k] = r_dir.std(), t_dir.std(), r_dir.mean() - ring.radius
        ref = s2 * np.eye(2)  # general Gaussian W2 (Bures), not the isotropic shortcut
        root = sqrtm(sqrtm(ref) @ cov @ sqrtm(ref)).real
        want.append(np.sqrt(np.sum((mu - centres[k]) ** 2) + np.trace(cov + ref - 2 * root)))
    want = np.array(want)
    np.testing.assert_allclose(got["per_mode_w2"], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["mode_w2"], np.sqrt(np.nanmean(want ** 2)), rtol=1e-4)
    for i, name in enumerate(("radial_std", "tangential_std", "radial_offset")):
        np.testing.assert_allclose(got[name], shape[:, i], rtol=1e-4, atol=1e-6, err_msg=name)
    frac = counts / counts.sum()
    np.testing.assert_allclose(got["mode_weight_tv"], 0.5 * np.abs(frac - 1 / m).sum(), rtol=1e-5)
    np.testing.assert_allclose(got["off_mode"], 1 - counts.sum() / len(x), rtol=1e-5)
    assert counts.sum() <= len(x) - 2
    # True samples sit at the stated floors; a shift v of every sample shows as |v|.
    true = ring.sample(jax.random.key(0), 100_000)
    floor = metrics.ring_mode_w2(true, ring)
    assert float(floor["mode_w2"]) < 2 * ring.std * math.sqrt(3 * m / 100_000)
    assert float(floor["mode_weight_tv"]) < 3 * math.sqrt(m / (2 * math.pi * 100_000))
    shifted = metrics.ring_mode_w2(true + np.array([0.03, 0.0], np.float32), ring)
    np.testing.assert_allclose(shifted["mode_w2"], 0.03, rtol=0.1)
