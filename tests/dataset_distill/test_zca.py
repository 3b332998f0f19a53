"""ZCA whitening (jaxkd.dataset_distill.zca) and the driver's whitened data."""

import os

import numpy as np
import pytest
import scipy.linalg

from configs.dataset_distill import dm_digits, mtt_digits
from jaxkd.core import errors
from jaxkd.dataset_distill import train as dd_train
from jaxkd.dataset_distill.experts import ExpertsMismatchError
from jaxkd.dataset_distill.zca import fit_zca


def _correlated(n=400, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(6, 6)) * np.array([3.0, 1.0, 0.5, 0.2, 0.05, 0.01])
    return (rng.normal(size=(n, 6)) @ mix.T + rng.normal(size=6)).reshape(n, 2, 3, 1)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_whitening_matrix_is_the_inverse_square_root_of_the_regularised_covariance(eps):
    x = _correlated()
    flat = x.reshape(len(x), -1)
    cov = np.cov(flat, rowvar=False)  # unbiased, as kornia's ZCA
    want = np.linalg.inv(scipy.linalg.sqrtm(cov + eps * np.eye(6)).real)
    z = fit_zca(x, eps)
    np.testing.assert_allclose(z.matrix, want, rtol=2e-4, atol=1e-5)
    white = z.apply(x)
    assert white.shape == x.shape
    np.testing.assert_allclose(white.reshape(len(x), -1), (flat - flat.mean(0)) @ want,
                               rtol=1e-3, atol=1e-4)
    # Whitened covariance: identity at eps = 0, U diag(s / (s + eps)) U^T otherwise.
    s, u = np.linalg.eigh(cov)
    np.testing.assert_allclose(np.cov(white.reshape(len(x), -1), rowvar=False),
                               (u * (s / (s + eps))) @ u.T, atol=2e-4)
    np.testing.assert_allclose(z.invert(white), x, rtol=1e-4, atol=1e-4)


def test_fit_rejects_what_it_cannot_whiten():
    x = _correlated().reshape(400, 6)
    x[:, 2] = 1.5  # a constant pixel, like the corners of every digit
    with pytest.raises(ValueError, match="zero-variance directions"):
        fit_zca(x, 0.0)
    z = fit_zca(x, 0.1)  # regularised: the constant direction maps to 0
    assert np.all(np.isfinite(z.apply(x))) and np.allclose(z.apply(x)[:, 2], 0, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        fit_zca(x[:1], 0.1)
    with pytest.raises(ValueError, match="eps=-1"):
        fit_zca(x, -1)


def test_load_real_whitens_both_splits_with_the_train_fit_and_maps_back():
    plain = dd_train.load_real("sklearn_digits")
    data = dd_train.load_real("sklearn_digits", zca=0.1)
    z = fit_zca(np.asarray(plain.x), 0.1)
    np.testing.assert_allclose(data.x, z.apply(plain.x), atol=1e-5)
    np.testing.assert_allclose(data.x_test, z.apply(plain.x_test), atol=1e-5)
    assert not np.allclose(data.x, plain.x, atol=0.1)
    # Back to the data set's units (0..16 digits), and forward again.
    np.testing.assert_allclose(data.to_stored(data.x), plain.to_stored(plain.x), atol=1e-3)
    np.testing.assert_allclose(data.from_stored(data.to_stored(data.x_test)), data.x_test,
                               atol=1e-3)


def test_a_whitened_run_saves_images_in_data_units_and_keys_its_caches(tmp_path):
    # Evaluation only (iterations 0): the saved set is the chosen real images, exactly.
    fast = {"eval.num_nets": 1, "eval.epochs": 1.0, "eval.baselines": False,
            "distill.iterations": 0, "data.zca": 0.1}
    config = dm_digits.get_config("smoke")
    config.distill.progress = False
    config.eval.cross_models = ""
    for key, value in fast.items():
        section, name = key.split(".")
        config[section][name] = value
    workdir = str(tmp_path / "zca")
    dd_train.train_and_evaluate(config, workdir)
    raw = np.asarray(dd_train.load_real("sklearn_digits").to_stored(
        dd_train.load_real("sklearn_digits").x)).reshape(-1, 64)
    saved = np.load(os.path.join(workdir, "synthetic.npz"))["images"].reshape(-1, 64)
    nearest = np.abs(saved[:, None] - raw[None]).max(-1).min(1)
    assert nearest.max() < 1e-3  # every saved image is a training image in 0..16 units
    key = open(os.path.join(workdir, "eval_protocol.json")).read()
    assert '"zca": 0.1' in key
    with pytest.raises(errors.ConfigError, match=r"config.data.zca=-0.5 must be >= 0"):
        config.data.zca = -0.5
        dd_train.check_config(config)


def test_experts_trained_without_whitening_are_refused_for_a_whitened_run(tmp_path):
    config = mtt_digits.get_config("smoke")
    config.distill.progress = False
    config.experts.num_experts = 1
    config.experts.epochs = 1
    config.experts.dir = str(tmp_path / "experts")
    config.distill.iterations = 0
    config.eval.num_nets, config.eval.epochs, config.eval.baselines = 1, 1.0, False
    config.eval.cross_models = ""
    config.mtt.max_start_epoch = 0
    dd_train.train_and_evaluate(config, str(tmp_path / "plain"))
    config.data.zca = 0.1
    with pytest.raises(ExpertsMismatchError, match=r"zca: on disk None, config 0.1"):
        dd_train.train_and_evaluate(config, str(tmp_path / "white"))
