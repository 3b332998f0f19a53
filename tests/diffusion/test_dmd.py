"""DMD's direction and surrogate loss against NumPy, and rCM's student step end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.diffusion import dmd

RNG = np.random.default_rng(0)


def test_dmd_direction_and_loss_gradient_match_numpy():
    x0, f_real, f_fake = (RNG.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
    scale = np.mean(np.abs(x0 - f_real), axis=-1, keepdims=True)
    want = (f_fake - f_real) / scale
    np.testing.assert_allclose(dmd.dmd_direction(x0, f_real, f_fake), want, rtol=1e-5)
    # The surrogate's value is 1/2 mean_d grad^2 and its gradient in x0 is grad / D (per example),
    # with the predictions held fixed.
    per = dmd.dmd_loss(jnp.asarray(x0), jnp.asarray(f_real), jnp.asarray(f_fake))
    np.testing.assert_allclose(per, 0.5 * np.mean(want ** 2, -1), rtol=1e-5)
    g_x, g_real, g_fake = jax.grad(lambda a, b, c: jnp.sum(dmd.dmd_loss(a, b, c)),
                                   argnums=(0, 1, 2))(*(jnp.asarray(v) for v in (x0, f_real, f_fake)))
    np.testing.assert_allclose(g_x, want / 3, rtol=1e-5)
    assert not np.any(g_real) and not np.any(g_fake)


@pytest.mark.parametrize("method", ["rcm", "dmd2"])
def test_rcm_and_dmd2_smoke_train_a_student_and_a_fake_score(tmp_path, method):
    from configs.diffusion import dmd2_ring, rcm_ring  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import train  # pylint: disable=g-import-not-at-top

    config = {"rcm": rcm_ring, "dmd2": dmd2_ring}[method].get_config("smoke")
    config.progress = False
    config.eval.update(dict(num_samples=200, teacher_steps=(1,), student_steps=(1,)))
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["student/steps_1/swd"])
    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top

    records = [r for r in metrics.read_metrics(tmp_path / "metrics.jsonl")
               if "student/train/dmd" in r]
    assert records and all(np.isfinite(r["student/train/fake_loss"]) for r in records)
    assert any(r["student/train/dmd"] > 0 for r in records)
    # rCM carries the consistency loss's statistics; DMD2 has no consistency term.
    assert ("student/train/g_norm" in records[-1]) == (method == "rcm")
