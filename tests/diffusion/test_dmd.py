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


def test_gan_losses_match_numpy():
    real, fake = RNG.normal(size=7).astype(np.float32), RNG.normal(size=5).astype(np.float32)
    softplus = lambda v: np.log1p(np.exp(v))
    np.testing.assert_allclose(dmd.gan_discriminator_loss(jnp.asarray(real), jnp.asarray(fake)),
                               np.mean(softplus(-real)) + np.mean(softplus(fake)), rtol=1e-6)
    np.testing.assert_allclose(dmd.gan_generator_loss(jnp.asarray(fake)),
                               np.mean(softplus(-fake)), rtol=1e-6)
    # The classifier's loss falls as it separates the two; the generator's rises.
    assert dmd.gan_discriminator_loss(real + 5, fake - 5) < dmd.gan_discriminator_loss(real, fake)
    assert dmd.gan_generator_loss(fake - 5) > dmd.gan_generator_loss(fake)


def test_the_gan_head_reads_the_bottleneck_features():
    from jaxkd.models.denoisers import GANHead, MLPDenoiser, UNet, bottleneck  # pylint: disable=g-import-not-at-top

    for net, x in ((MLPDenoiser(hidden=16, depth=2, emb_dim=8), jnp.ones((3, 2))),
                   (UNet(channels=8, channel_mult=(1, 2), emb_dim=8), jnp.ones((3, 8, 8, 1)))):
        params = net.init(jax.random.key(0), x, jnp.ones(3))
        feats = bottleneck(net, params, x, jnp.ones(3))
        assert feats.shape == ((3, 16) if x.ndim == 2 else (3, 4, 4, 16))
        head = GANHead(hidden=8)
        logits = head.apply(head.init(jax.random.key(1), feats), feats)
        assert logits.shape == (3,)
        # Sowing does not change the network's output.
        np.testing.assert_array_equal(net.apply(params, x, jnp.ones(3)),
                                      net.apply(params, x, jnp.ones(3), mutable=[])[0])


@pytest.mark.parametrize("method", ["rcm", "sds", "dmd2_gan"])
def test_distribution_terms_train_the_student(tmp_path, method):
    # rCM: sCD + DMD with a fake score; SDS: score distillation alone, no fake score; DMD2 (DMD
    # alone) with its GAN head. VSD (SDS with a fake score) combines these runs' branches.
    from configs.diffusion import dmd2_ring, rcm_ring, sds_ring  # pylint: disable=g-import-not-at-top
    from jaxkd.diffusion import train  # pylint: disable=g-import-not-at-top

    config = {"rcm": rcm_ring, "sds": sds_ring, "dmd2_gan": dmd2_ring}[method].get_config("smoke")
    config.progress = False
    config.eval.update(dict(num_samples=200, teacher_steps=(1,), student_steps=(1,)))
    config.rcm.update(dict(fake_steps=1, sim_steps=(1,)))  # (a smaller program to compile)
    config.rcm.gan.enabled = method == "dmd2_gan"
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["student/steps_1/swd"])
    from jaxkd.core import metrics  # pylint: disable=g-import-not-at-top

    records = [r for r in metrics.read_metrics(tmp_path / "metrics.jsonl")
               if "student/train/dmd" in r]
    assert records
    assert all(np.isfinite(r.get("student/train/fake_loss", 0.0)) for r in records)
    assert ("student/train/fake_loss" in records[-1]) == (method != "sds")
    assert any(r["student/train/dmd"] > 0 for r in records)
    # rCM carries the consistency loss's statistics; DMD2 has no consistency term.
    assert ("student/train/g_norm" in records[-1]) == (method == "rcm")
    if method == "dmd2_gan":  # both GAN losses logged, finite, and moving
        for key in ("student/train/gan_d", "student/train/gan_g"):
            values = [r[key] for r in records]
            assert np.all(np.isfinite(values)) and len(set(values)) > 1, key


def test_score_distillation_direction_matches_numpy():
    t = RNG.uniform(0.2, 1.4, size=4).astype(np.float32)
    x_t, vel, z = (RNG.normal(size=(4, 2)).astype(np.float32) for _ in range(3))
    sd = 0.7
    z_hat = dmd.noise_prediction(jnp.asarray(vel), jnp.asarray(x_t), jnp.asarray(t), sd)
    want_z = np.sin(t)[:, None] * x_t + np.cos(t)[:, None] * sd * vel
    np.testing.assert_allclose(z_hat, want_z, rtol=1e-5)
    # Noise prediction of the exact velocity recovers the noise: x_t = cos t x0 + sin t z,
    # v = cos t z - sin t x0 -> sin t x_t + cos t v = z.
    x0 = RNG.normal(size=(4, 2)).astype(np.float32)
    xt = np.cos(t)[:, None] * x0 + np.sin(t)[:, None] * z
    v = np.cos(t)[:, None] * z - np.sin(t)[:, None] * x0
    np.testing.assert_allclose(dmd.noise_prediction(jnp.asarray(v / sd), jnp.asarray(xt),
                                                    jnp.asarray(t), sd), z, rtol=1e-4, atol=1e-5)
    g = dmd.score_direction(jnp.asarray(want_z), jnp.asarray(z), jnp.asarray(t), sd)
    np.testing.assert_allclose(g, np.sin(t)[:, None] ** 2 * (want_z - z) / sd, rtol=1e-5)
    g1 = dmd.score_direction(jnp.asarray(want_z), jnp.asarray(z), jnp.asarray(t), sd, "uniform")
    np.testing.assert_allclose(g1, (want_z - z) / sd, rtol=1e-5)
