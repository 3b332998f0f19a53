"""Digits image metrics: the Frechet distance against closed forms and SciPy, the classifier's
accuracy and on-disk cache, and the evaluator on real, mislabelled and noise images."""

import json
import os

import jax
import numpy as np
import pytest
from scipy import linalg, stats

from jaxkd.data import datasets
from jaxkd.diffusion import image_metrics


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_diagonal_closed_form_including_singular_and_rotated():
    rng = np.random.default_rng(0)
    d = 12
    a, b = rng.uniform(0, 3, d), rng.uniform(0, 3, d)
    a[:4] = 0.0  # singular covariances (fewer samples than dimensions)
    b[2:6] = 0.0
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert image_metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-10)
    # The same Gaussians in a random orthonormal basis: FD is rotation invariant.
    q = stats.ortho_group.rvs(d, random_state=1)
    cov1, cov2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    fd = image_metrics.frechet_distance(q @ mu1, cov1, q @ mu2, cov2)
    assert fd == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(1)
    for d in (1, 5, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        cov1, cov2 = _random_spd(rng, d), _random_spd(rng, d)
        expected = (np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
                    - 2 * np.trace(linalg.sqrtm(cov1 @ cov2).real))
        fd = image_metrics.frechet_distance(mu1, cov1, mu2, cov2)
        assert isinstance(fd, float)
        assert fd == pytest.approx(expected, rel=1e-6)
        assert image_metrics.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(fd, rel=1e-9)
        assert image_metrics.frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0, abs=1e-9)
        # Means only: the squared distance between them.
        assert image_metrics.frechet_distance(mu1, cov1, mu2, cov1) == pytest.approx(
            np.sum((mu1 - mu2) ** 2), rel=1e-6, abs=1e-9)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[d, d\]"):
        image_metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match=r"\[d\]"):
        image_metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))


def test_gaussian_stats_matches_numpy():
    x = np.random.default_rng(2).normal(size=(50, 7)).astype(np.float32)
    mu, cov = image_metrics.gaussian_stats(x)
    assert mu.dtype == cov.dtype == np.float64 and cov.shape == (7, 7)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64).T), rtol=1e-12)
    # ddof=1: the unbiased estimate, sum of squared deviations / (n - 1).
    dev = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(np.diag(cov), np.sum(dev**2, 0) / 49, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[n, d\] with n >= 2"):
        image_metrics.gaussian_stats(x[:1])


# ----------------------------------------------------------------------------- the classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("digits_classifier"))
    return directory, image_metrics.load_or_train(directory)  # the default settings: ~20 s


@pytest.fixture(scope="module")
def evaluator(trained):
    return image_metrics.ImageEvaluator(trained[1])


@pytest.fixture(scope="module")
def untrained():
    """A randomly initialised classifier: enough for plumbing and input checks, no training."""
    params = jax.jit(image_metrics.DigitsNet().init)(jax.random.key(0), np.zeros((1, 8, 8, 1)))
    return image_metrics.DigitsClassifier(params, float("nan"))


@pytest.fixture(scope="module")
def untrained_evaluator(untrained):
    return image_metrics.ImageEvaluator(untrained)


@pytest.fixture(scope="module")
def test_split():
    images, labels = datasets.load("sklearn_digits", "test", in_memory=True).arrays()
    return images.astype(np.float32), labels


@pytest.mark.slow
def test_classifier_accuracy_and_metadata(trained, test_split):
    directory, classifier = trained
    assert classifier.test_accuracy >= 0.97
    images, labels = test_split
    logits = classifier.logits(images)
    assert logits.shape == (360, 10) and classifier.features(images).shape == (360, 128)
    assert np.mean(np.argmax(logits, -1) == labels) == classifier.test_accuracy
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    assert meta["steps"] == image_metrics.DEFAULT_STEPS and meta["seed"] == 0
    assert meta["test_accuracy"] == classifier.test_accuracy


@pytest.mark.slow
def test_load_or_train_reloads_without_training(trained, test_split, monkeypatch):
    directory, classifier = trained
    params_path = os.path.join(directory, "params.msgpack")
    mtime = os.stat(params_path).st_mtime_ns

    def fail(**kwargs):
        raise AssertionError("load_or_train retrained a saved classifier")

    monkeypatch.setattr(image_metrics, "train_classifier", fail)
    loaded = image_metrics.load_or_train(directory)
    assert os.stat(params_path).st_mtime_ns == mtime
    assert loaded.test_accuracy == classifier.test_accuracy
    images = test_split[0]
    np.testing.assert_array_equal(loaded.logits(images), classifier.logits(images))
    # Other settings: a clear error naming the setting, never a silent retrain.
    with pytest.raises(ValueError, match=r"steps=500 \(requested 100\)"):
        image_metrics.load_or_train(directory, steps=100)
    with pytest.raises(ValueError, match=r"seed=0 \(requested 1\)"):
        image_metrics.load_or_train(directory, seed=1)


@pytest.mark.slow
def test_load_or_train_rejects_corrupted_params(trained, tmp_path):
    directory, _ = trained
    for name in ("meta.json", "params.msgpack"):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        if name == "params.msgpack":
            data = data[:-1] + bytes([data[-1] ^ 1])
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="sha256"):
        image_metrics.load_or_train(str(tmp_path))


def test_batched_features_match_one_image_at_a_time(untrained, test_split):
    classifier = untrained
    images = np.concatenate([test_split[0]] * 2)[:600]  # 2 batches of 512, the second padded
    feats = classifier.features(images)
    for i in (0, 359, 511, 512, 599):
        np.testing.assert_allclose(feats[i], classifier.features(images[i:i + 1])[0],
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the evaluator


@pytest.mark.slow
def test_evaluate_real_mislabelled_and_noise_images(evaluator, trained, test_split):
    images, labels = test_split
    real = evaluator.evaluate(images, labels)
    assert set(real) == {"fd", "class_acc"}
    assert real["class_acc"] == trained[1].test_accuracy
    assert real["fd"] == evaluator.real_test_fd()
    # Every label moved to the next image's: about chance (1/10) agreement.
    assert evaluator.evaluate(images, np.roll(labels, 1))["class_acc"] <= 0.15
    noise = np.random.default_rng(3).uniform(0, 16, images.shape)
    noise_fd = evaluator.evaluate(noise, labels)["fd"]
    assert real["fd"] > 0 and noise_fd > 50 * real["fd"]
    # The reference is the train split: its own images are at distance 0 (up to rounding).
    train_images, train_labels = datasets.load("sklearn_digits", "train", in_memory=True).arrays()
    assert evaluator.evaluate(train_images, train_labels)["fd"] == pytest.approx(0, abs=1e-6)
    # An independent recomputation from the classifier's features.
    feats = trained[1].features(noise).astype(np.float64)
    ref = trained[1].features(train_images).astype(np.float64)
    expected = image_metrics.frechet_distance(
        feats.mean(0), np.cov(feats.T), ref.mean(0), np.cov(ref.T))
    assert noise_fd == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "shape, labels, match",
    [
        ((10, 8, 8), np.zeros(10, int), r"\[N, 8, 8, 1\].*\(10, 8, 8\)"),
        ((10, 64), np.zeros(10, int), r"\[N, 8, 8, 1\].*\(10, 64\)"),
        ((10, 8, 8, 3), np.zeros(10, int), r"\[N, 8, 8, 1\].*\(10, 8, 8, 3\)"),
        ((1, 8, 8, 1), np.zeros(1, int), r"at least 2 images"),
        ((10, 8, 8, 1), np.zeros(9, int), r"\[N\] = \[10\].*\(9,\)"),
        ((10, 8, 8, 1), np.zeros((10, 1), int), r"\[N\] = \[10\].*\(10, 1\)"),
        ((10, 8, 8, 1), np.zeros(10), r"integers"),
        ((10, 8, 8, 1), np.full(10, 10), r"0\.\.9"),
    ],
)
def test_evaluate_rejects_bad_inputs(untrained_evaluator, shape, labels, match):
    with pytest.raises(ValueError, match=match):
        untrained_evaluator.evaluate(np.zeros(shape, np.float32), labels)


def test_evaluate_rejects_non_finite_images(untrained_evaluator):
    images = np.zeros((10, 8, 8, 1), np.float32)
    images[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 10 images have non-finite"):
        untrained_evaluator.evaluate(images, np.zeros(10, int))
