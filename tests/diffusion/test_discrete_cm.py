"""Discrete consistency (CD / iCT) pieces against NumPy, and the CD/CT driver paths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxkd.diffusion import discrete_cm

SD = 0.5
RNG = np.random.default_rng(0)


def test_pseudo_huber_and_grid_and_curriculum_match_their_formulas():
    a, b = RNG.normal(size=(4, 3, 2)), RNG.normal(size=(4, 3, 2))
    c = 0.00054 * math.sqrt(6)
    want = np.sqrt(np.sum((a - b).reshape(4, -1) ** 2, -1) + c * c) - c
    np.testing.assert_allclose(discrete_cm.pseudo_huber(jnp.asarray(a), jnp.asarray(b)), want,
                               rtol=1e-5)
    s = discrete_cm.karras_sigmas(18)
    assert s[0] == pytest.approx(0.002) and s[-1] == pytest.approx(80.0) and np.all(np.diff(s) > 0)
    # iCT: 400k steps, 10 -> 1280 doubling every 400k / 8 = 50k steps.
    assert [discrete_cm.curriculum_steps(k, 400_000) for k in (0, 49_999, 50_000, 399_999)] == [
        10, 10, 20, 1280]


def test_pairs_are_drawn_with_the_lognormal_weights():
    s = jnp.asarray(discrete_cm.karras_sigmas(10), jnp.float32)
    n = np.asarray(discrete_cm.sample_index(jax.random.key(0), s, (40_000,), p_mean=-1.1,
                                            p_std=2.0))
    ls = np.log(np.asarray(s, np.float64))
    w = erf((ls[1:] + 1.1) / (np.sqrt(2) * 2.0)) - erf((ls[:-1] + 1.1) / (np.sqrt(2) * 2.0))
    freq = np.bincount(n, minlength=10) / n.size
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.01)


def test_the_ct_and_cd_losses_match_numpy_for_a_linear_model():
    A = RNG.normal(size=(2, 2)) * 0.3
    model = lambda x, t: x @ jnp.asarray(A, jnp.float32).T + t[:, None]
    teacher = lambda x, t: 0.5 * x - t[:, None]
    x0 = RNG.normal(size=(5, 2)).astype(np.float32)
    sig = discrete_cm.karras_sigmas(8).astype(np.float32)
    key = jax.random.key(3)
    k_n, k_z = jax.random.split(key)
    n = np.asarray(discrete_cm.sample_index(k_n, jnp.asarray(sig), (5,), p_mean=-1.1, p_std=2.0))
    z = SD * np.asarray(jax.random.normal(k_z, x0.shape), np.float64)
    t_lo, t_hi = np.arctan(sig[n] / SD), np.arctan(sig[n + 1] / SD)
    c, s = np.cos, np.sin
    f = lambda x, t: c(t)[:, None] * x - s(t)[:, None] * SD * ((x / SD) @ A.T + t[:, None])
    x_hi = c(t_hi)[:, None] * x0 + s(t_hi)[:, None] * z
    huber = lambda d: np.sqrt(np.sum(d ** 2, -1) + (0.00054 * np.sqrt(2)) ** 2) - 0.00054 * np.sqrt(2)
    w = 1.0 / (sig[n + 1] - sig[n])
    for name, x_lo in (
            ("ct", c(t_lo)[:, None] * x0 + s(t_lo)[:, None] * z),
            ("cd", x_hi - (t_hi - t_lo)[:, None] * SD * (0.5 * x_hi / SD - t_hi[:, None]))):
        got = discrete_cm.discrete_cm_loss(model, jnp.asarray(x0), key, jnp.asarray(sig),
                                           sigma_d=SD, p_mean=-1.1, p_std=2.0,
                                           teacher=teacher if name == "cd" else None)
        want = w * huber(f(x_hi, t_hi) - f(x_lo, t_lo))
        np.testing.assert_allclose(got, want, rtol=2e-3, err_msg=name)


def test_the_driver_trains_ct_through_its_curriculum(tmp_path):
    # (CD's driver path differs only by the teacher, whose closure rCM/sCD runs exercise.)
    from configs.diffusion import ct_ring  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import train  # pylint: disable=g-import-not-at-top

    config = ct_ring.get_config("smoke")
    config.progress = False
    config.eval.update(dict(num_samples=200, teacher_steps=(1,), student_steps=(1,)))
    config.discrete.update(dict(s0=2, s1=4))  # 10 steps: grids of 2 then 4
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["student/steps_1/swd"]) and np.isfinite(
        results["student/final_loss"])
