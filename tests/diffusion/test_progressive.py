"""Progressive distillation's target and loss against a direct NumPy computation."""

import jax.numpy as jnp
import numpy as np

from jaxkd.diffusion import progressive

SD = 0.5
RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 3)) * 0.4


def _teacher(x, t):  # a velocity NumPy can evaluate: F = A x + t
    return x @ jnp.asarray(A, jnp.float32).T + t[:, None]


def _np_x0(x, t):
    f = (x / SD) @ A.T + t[:, None]
    return np.cos(t)[:, None] * x - np.sin(t)[:, None] * SD * f


def _np_ddim(x, x0, t, s):
    c, si = np.cos, np.sin
    return c(s)[:, None] * x0 + si(s)[:, None] * (x - c(t)[:, None] * x0) / si(t)[:, None]


def test_one_student_step_to_the_target_lands_where_two_teacher_steps_do():
    x_t = RNG.normal(size=(4, 3))
    t, t_mid, t_next = np.full(4, 1.2), np.full(4, 0.9), np.array([0.5, 0.5, 0.6, 0.3])
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    target = np.asarray(progressive.progressive_target(_teacher, f32(x_t), f32(t), f32(t_mid),
                                                       f32(t_next), SD), np.float64)
    x_mid = _np_ddim(x_t, _np_x0(x_t, t), t, t_mid)
    x_next = _np_ddim(x_mid, _np_x0(x_mid, t_mid), t_mid, t_next)
    np.testing.assert_allclose(_np_ddim(x_t, target, t, t_next), x_next, rtol=1e-4, atol=1e-5)
    ratio = (np.sin(t_next) / np.sin(t))[:, None]
    want = (x_next - ratio * x_t) / (np.cos(t_next)[:, None] - ratio * np.cos(t)[:, None])
    np.testing.assert_allclose(target, want, rtol=1e-4, atol=1e-5)


def test_loss_is_the_larger_of_the_clean_and_noise_errors():
    x_t, x0_s, x0_tg = (RNG.normal(size=(5, 2)) for _ in range(3))
    t = RNG.uniform(0.2, 1.4, size=5)
    got = progressive.progressive_loss(*(jnp.asarray(a, jnp.float32) for a in (x0_s, x0_tg, x_t)),
                                       jnp.asarray(t, jnp.float32), SD)
    eps = lambda x0: (x_t - np.cos(t)[:, None] * x0) / (np.sin(t)[:, None] * SD)
    want = np.maximum(np.mean((x0_s - x0_tg) ** 2, -1), np.mean((eps(x0_s) - eps(x0_tg)) ** 2, -1))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_progressive_rounds_halve_the_steps_end_to_end(tmp_path):
    from configs.diffusion import progressive_moons  # pylint: disable=g-import-not-at-top
    from jaxkd.core import errors  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import train  # pylint: disable=g-import-not-at-top

    config = progressive_moons.get_config("smoke")
    config.progress = False
    config.eval.update(dict(num_samples=200, teacher_steps=(1,)))
    results = train.train_and_evaluate(config, str(tmp_path))
    for n in (1, 2):  # start_steps 4: rounds of 2 and 1 steps
        assert np.isfinite(results[f"student/steps_{n}/swd"])
        assert (tmp_path / "checkpoints" / "student" / f"round_{n}_steps").is_dir()
    # The grids nest: the 1-step grid is the 2-step grid's first and last time.
    g2, g1 = train.progressive_grid(config, 1.0, 2), train.progressive_grid(config, 1.0, 1)
    assert list(g1) == [g2[0], g2[-1]] and g2[-1] == 0.0
    config.progressive.start_steps = 6
    import pytest  # pylint: disable=g-import-not-at-top

    with pytest.raises(errors.ConfigError, match="power of two"):
        train.check_config(config)
