"""Sample-quality metrics for class-conditional diffusion on scikit-learn's 8x8 digits.

Images are always in the data set's **stored units**: float ``[N, 8, 8, 1]``, 0..16 for real
digits (values outside that range are scored as they are; clip samples first if the model's
sampler does not), so the metrics do not depend on how a diffusion model scales its data.

* :func:`frechet_distance` and :func:`gaussian_stats`: the Frechet distance between two
  Gaussians fitted to feature sets (FID's formula), in float64 NumPy.
* :class:`DigitsClassifier`: a small in-project ConvNet trained on the train split (98-99% test
  accuracy, about 20 s on two busy CPU cores), cached on disk by :func:`load_or_train`; its
  128-d penultimate layer gives the features.
* :class:`ImageEvaluator`: ``evaluate(images, labels) -> {"fd", "class_acc"}`` against the
  real train split, and :meth:`ImageEvaluator.real_test_fd`, the noise floor.

With the default classifier (seed 0, 500 steps; 98.3% test accuracy) the real test split (360
images) scores ``fd`` 0.65 against the train split (:meth:`ImageEvaluator.real_test_fd`), the
same images shifted right by one pixel 6.4, near-blank images 530 and uniform noise on 0..16
about 190 (360 or 1000 images). FD is biased upward for small ``N``, so compare models at one
sample size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.core import report
from jaxkd.data import datasets

__all__ = [
    "ARCHITECTURE",
    "DEFAULT_STEPS",
    "DigitsClassifier",
    "DigitsNet",
    "ImageEvaluator",
    "frechet_distance",
    "gaussian_stats",
    "load_or_train",
    "train_classifier",
]

_DATASET = "sklearn_digits"
_SPEC = datasets.DATASETS[_DATASET]
_IMAGE_SHAPE = tuple(_SPEC.shape)  # (8, 8, 1)
_NUM_CLASSES = _SPEC.num_classes

# Training settings other than the seed and the step count (recorded in meta.json).
DEFAULT_STEPS = 500  # ~22 epochs; seeds 0-3 give 98.3-99.4% test accuracy
_BATCH_SIZE = 64
_LEARNING_RATE = 3e-3  # Adam, cosine-decayed to 0 over the run
# Recorded in meta.json: a saved classifier of another architecture is never loaded.
ARCHITECTURE = "conv32-conv64-avgpool2-conv128-meanpool-dense128-dense10"
_EVAL_BATCH = 512  # images per forward pass in DigitsClassifier (one compiled shape)
_PARAMS_FILE, _META_FILE = "params.msgpack", "meta.json"


# ----------------------------------------------------------------------------- Frechet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and covariance ``[d, d]`` (``ddof=1``) of ``features [n, d]``, float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [n, d] with n >= 2, got shape {features.shape}")
    d = features.shape[1]
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(d, d)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues below 0 clipped to 0)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance squared between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))``: FID's formula, in feature units
    squared. ``mu [d]``, ``cov [d, d]`` symmetric PSD (may be singular, e.g. from fewer than
    ``d`` samples). Float64 NumPy. ``tr (cov1 cov2)^(1/2)`` is the sum of the square roots of the
    eigenvalues of the symmetric PSD ``S cov2 S`` with ``S = cov1^(1/2)`` (same spectrum as
    ``cov1 cov2``), so no complex ``sqrtm`` and no ``eps * I`` fudge; rounding-level negative
    eigenvalues are clipped to 0, and so is the result. Symmetric in its two Gaussians up to
    rounding. Returns a Python float.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            "expected mu1, mu2 [d] and cov1, cov2 [d, d], got shapes "
            f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    s1 = _psd_sqrt(cov1)
    m = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))


# ----------------------------------------------------------------------------- the classifier


class _Conv3x3(nn.Module):
    """3x3 stride-1 SAME convolution with bias, as one matmul over the 3x3 patches.

    Same function as ``nn.Conv(features, (3, 3))``; on XLA:CPU this is about 25x faster to train
    on 8x8 inputs (the native convolution's gradients are slow there). ``kernel`` is
    ``[9 * C_in, features]`` with rows ordered (dy, dx, c_in).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (9 * c_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate(
            [xp[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)
        return patches @ kernel + bias


class DigitsNet(nn.Module):
    """The evaluation ConvNet (:data:`ARCHITECTURE`); no normalisation layers, so a pure function.

    Input: float ``[B, 8, 8, 1]`` in stored units (0..16), standardised inside with the data
    set's mean / std. conv3x3 32 -> relu -> conv3x3 64 -> relu -> avgpool 2 -> conv3x3 128 ->
    relu -> spatial mean -> Dense 128 (``features``) -> relu -> Dense 10.
    Returns ``(features [B, 128], logits [B, 10])``, float32; ``features`` are taken *before*
    their relu (a linear map of the pooled conv activations: no dead, all-zero dimensions and a
    more Gaussian distribution for the Frechet distance).
    """

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = (images.astype(jnp.float32) - _SPEC.mean[0]) / _SPEC.std[0]
        x = nn.relu(_Conv3x3(32)(x))
        x = nn.relu(_Conv3x3(64)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(_Conv3x3(128)(x))
        features = nn.Dense(128, name="features")(jnp.mean(x, axis=(1, 2)))
        return features, nn.Dense(_NUM_CLASSES, name="head")(nn.relu(features))


@functools.partial(jax.jit, static_argnums=0)
def _forward(module: DigitsNet, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return module.apply(params, images)


def _check_images(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"images must be [N, 8, 8, 1] in stored units (0..16), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.all(np.isfinite(images.reshape(images.shape[0], -1)), axis=1)))
        raise ValueError(f"{bad} of {images.shape[0]} images have non-finite values")
    return images.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DigitsClassifier:
    """A trained :class:`DigitsNet`: ``params`` plus the test accuracy measured after training.

    ``logits`` and ``features`` take float ``[N, 8, 8, 1]`` images in stored units (any ``N``,
    run 512 at a time through one compiled program; 10,000 images take about 2 s) and return
    float32 NumPy ``[N, 10]`` / ``[N, 128]``. Build one with :func:`load_or_train` (or
    :func:`train_classifier`).
    """

    params: Any
    test_accuracy: float
    module: DigitsNet = DigitsNet()

    def features_and_logits(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(features [N, 128], logits [N, 10])`` of ``images [N, 8, 8, 1]``, one pass."""
        images = _check_images(images)
        n = images.shape[0]
        padded = np.zeros((-(-n // _EVAL_BATCH) * _EVAL_BATCH, *_IMAGE_SHAPE), np.float32)
        padded[:n] = images
        outs = [_forward(self.module, self.params, padded[i:i + _EVAL_BATCH])
                for i in range(0, padded.shape[0], _EVAL_BATCH)]
        feats, logits = (np.concatenate([np.asarray(o[k]) for o in outs])[:n] for k in (0, 1))
        return feats, logits

    def features(self, images: Any) -> np.ndarray:
        """Penultimate-layer features ``[N, 128]`` (before the relu; see :class:`DigitsNet`)."""
        return self.features_and_logits(images)[0]

    def logits(self, images: Any) -> np.ndarray:
        """Class logits ``[N, 10]``."""
        return self.features_and_logits(images)[1]


def _split(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = datasets.load(_DATASET, split, in_memory=True).arrays()
    return images.astype(np.float32), labels.astype(np.int32)


def _shift_by_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """``image [8, 8, 1]`` shifted by -1, 0 or +1 pixel along each axis, zero (= blank) filled."""
    offset = jax.random.randint(key, (2,), 0, 3)
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
    return jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), image.shape)


@functools.partial(jax.jit, static_argnames="steps")
def _train(key: jax.Array, images: jax.Array, labels: jax.Array, *, steps: int) -> Any:
    """Adam on random-with-replacement batches of shifted train images; one compiled scan."""
    module = DigitsNet()
    tx = optax.adam(optax.cosine_decay_schedule(_LEARNING_RATE, steps))
    init_key, key = jax.random.split(key)
    params = module.init(init_key, images[:1])

    def step(carry, step_key):
        params, opt_state = carry
        index_key, shift_key = jax.random.split(step_key)
        index = jax.random.randint(index_key, (_BATCH_SIZE,), 0, images.shape[0])
        x = jax.vmap(_shift_by_one)(jax.random.split(shift_key, _BATCH_SIZE), images[index])

        def loss_fn(p):
            logits = module.apply(p, x)[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[index]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return params


def _test_accuracy(module: DigitsNet, params: Any) -> float:
    images, labels = _split("test")
    logits = DigitsClassifier(params, float("nan"), module).logits(images)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def train_classifier(*, seed: int = 0, steps: int = DEFAULT_STEPS) -> DigitsClassifier:
    """Trains :class:`DigitsNet` on the train split and measures its test accuracy.

    Adam (learning rate 3e-3, cosine-decayed to 0), batch 64 drawn with replacement, each image
    shifted by a random -1/0/+1 pixel in each direction; deterministic given ``seed`` on one
    backend. The default 500 steps take about 20 s (8 s of it compiling) on two busy CPU cores
    and reach 98.3% test accuracy with seed 0 (98.6-99.4% with seeds 1-3).
    """
    images, labels = _split("train")
    params = _train(jax.random.key(seed), jnp.asarray(images), jnp.asarray(labels), steps=steps)
    params = jax.device_get(params)
    return DigitsClassifier(params, _test_accuracy(DigitsNet(), params))


def _settings(seed: int, steps: int) -> dict[str, Any]:
    return {"architecture": ARCHITECTURE, "seed": seed, "steps": steps,
            "batch_size": _BATCH_SIZE, "learning_rate": _LEARNING_RATE}


def load_or_train(directory: str, *, seed: int = 0, steps: int = DEFAULT_STEPS) -> DigitsClassifier:
    """The classifier saved in ``directory``, trained (:func:`train_classifier`) and saved first
    if ``directory`` holds none.

    Files: ``params.msgpack`` (``flax.serialization.to_bytes``) and ``meta.json`` (the training
    settings, the measured ``test_accuracy``, ``train_seconds`` and the params' ``sha256``),
    each written atomically, ``meta.json`` last, so a directory without it is simply retrained.
    A directory holds one classifier, so FDs computed with it stay comparable: if its settings
    (``seed``, ``steps``, or the module's fixed ones, e.g. ``architecture``) differ from the
    requested ones, this raises ``ValueError`` naming them instead of retraining; use another
    directory or delete this one. A params file that does not match its recorded hash also
    raises.
    """
    settings = _settings(seed, steps)
    params_path = os.path.join(directory, _PARAMS_FILE)
    meta_path = os.path.join(directory, _META_FILE)
    module = DigitsNet()
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        differing = [f"{k}={meta.get(k)!r} (requested {v!r})"
                     for k, v in settings.items() if meta.get(k) != v]
        if differing:
            raise ValueError(
                f"the digits classifier in {directory} was trained with {', '.join(differing)}; "
                "use another directory or delete this one")
        with open(params_path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != meta["params_sha256"]:
            raise ValueError(f"{params_path} does not match the sha256 recorded in {meta_path}")
        template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *_IMAGE_SHAPE)))
        params = flax.serialization.from_bytes(template, data)
        return DigitsClassifier(params, float(meta["test_accuracy"]), module)

    start = time.perf_counter()
    classifier = train_classifier(seed=seed, steps=steps)
    train_seconds = time.perf_counter() - start
    data = flax.serialization.to_bytes(classifier.params)
    report.write_bytes_atomic(params_path, data)
    report.write_json_atomic(meta_path, {
        **settings, "test_accuracy": classifier.test_accuracy,
        "train_seconds": round(train_seconds, 2), "params_sha256": hashlib.sha256(data).hexdigest(),
        "jax_version": jax.__version__})
    return classifier


# ----------------------------------------------------------------------------- the evaluator


class ImageEvaluator:
    """Scores class-conditional samples against the real train split (:class:`DigitsClassifier`).

    The train split's feature statistics (:func:`gaussian_stats` of the classifier's
    ``features``) are computed once, at construction.
    """

    def __init__(self, classifier: DigitsClassifier):
        self.classifier = classifier
        self.train_mu, self.train_cov = gaussian_stats(classifier.features(_split("train")[0]))
        self._real_test_fd: float | None = None

    def fd(self, images: Any) -> float:
        """Frechet distance between the features of ``images [N, 8, 8, 1]`` (N >= 2) and the
        train split's."""
        return self.evaluate(images, None)["fd"]

    def evaluate(self, images: Any, labels: Any) -> dict[str, float]:
        """``{"fd", "class_acc"}`` for ``images [N, 8, 8, 1]`` (stored units, N >= 2) generated
        for classes ``labels [N]`` (ints in 0..9).

        ``fd``: :func:`frechet_distance` between the Gaussian fits of the images' features and
        of the real train split's. ``class_acc``: the fraction of images the classifier assigns
        to their requested class. ``labels=None`` skips ``class_acc``. Non-finite images raise
        ``ValueError`` (they have no features).
        """
        images = _check_images(images)
        n = images.shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 images [N, 8, 8, 1] for a covariance, got N={n}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise ValueError(
                    f"labels must be [N] = [{n}] (one per image), got shape {labels.shape}")
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels must be integers in 0..9, got dtype {labels.dtype}")
            if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
                raise ValueError(f"labels must be in 0..9, got {labels.min()}..{labels.max()}")
        features, logits = self.classifier.features_and_logits(images)
        result = {"fd": frechet_distance(*gaussian_stats(features), self.train_mu, self.train_cov)}
        if labels is not None:
            result["class_acc"] = float(np.mean(np.argmax(logits, axis=-1) == labels))
        return result

    def real_test_fd(self) -> float:
        """FD of the real test split (360 images) against the train split: the floor that
        sampling noise alone sets at about that sample size (cached)."""
        if self._real_test_fd is None:
            self._real_test_fd = self.fd(_split("test")[0])
        return self._real_test_fd
