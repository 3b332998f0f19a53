"""Offline tfds builders: real data sets that need no network.

Two small, real data sets ship with Python packages that jaxkd already depends on, so the whole
codebase (quickstart, smoke tests, CI) runs end to end without downloading anything:

* ``sklearn_digits``: scikit-learn's bundled 8x8 handwritten digits.
* ``mnist1d``: MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package.

Both are ordinary ``tfds.core.GeneratorBasedBuilder`` subclasses written in ``array_record``
format, so they are read exactly like the standard tfds data sets (``as_data_source``, no
TensorFlow). :func:`prepare` builds one on first use into the jaxkd cache directory
(:func:`default_data_dir`), under a file lock so that concurrent first use from several
processes (e.g. a multi-host launch) is safe: one process builds, the others wait and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "DIGITS_TEST_SIZE",
    "DIGITS_SPLIT_SEED",
    "MNIST1D_SEED",
    "SklearnDigits",
    "Mnist1d",
    "OFFLINE_BUILDERS",
    "default_data_dir",
    "prepare",
]

# The documented sklearn_digits split (see `SklearnDigits`).
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
# The documented mnist1d generation seed (the package's own default).
MNIST1D_SEED = 42


def default_data_dir() -> str:
    """Where offline builders are prepared.

    ``$JAXKD_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/jaxkd/tensorflow_datasets``, else
    ``~/.cache/jaxkd/tensorflow_datasets``. Read at call time, so tests can monkeypatch it.
    """
    if os.environ.get("JAXKD_DATA_DIR"):
        return os.path.expanduser(os.environ["JAXKD_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "jaxkd", "tensorflow_datasets")


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for jaxkd's offline builders.

    ``code_path`` is overridden because tfds' own lookup, for a builder defined inside a
    package, touches ``importlib_resources`` (a backport that is not installed on
    Python >= 3.9 and that tfds does not declare), and crashes in ``download_and_prepare``.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)


class SklearnDigits(_OfflineBuilder):
    """scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``), 1797 images.

    Features:
      * ``image``: uint8 ``(8, 8, 1)`` (a raw ``Tensor`` feature: tfds' ``Image`` feature needs
        TensorFlow to encode PNG). Pixel values are the original ones, **0..16** (the UCI
        "optdigits" 4x4-block counts), not rescaled to 0..255.
      * ``label``: ``ClassLabel(num_classes=10)``.
      * ``index``: int64, the example's row in ``load_digits()`` (for provenance checks).

    Splits (fixed; documented so results are comparable across machines)::

        train_idx, test_idx = sklearn.model_selection.train_test_split(
            np.arange(1797), test_size=360, stratify=load_digits().target, random_state=0)

    giving ``train`` = 1437 and ``test`` = 360 examples, each split stored in increasing
    ``index`` order (shuffling on write is disabled).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 1437/360 split, random_state=0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's bundled 8x8 digits; pixel values 0..16.",
            features=tfds.features.FeaturesDict(
                {
                    # A raw Tensor, not `tfds.features.Image`: Image's PNG encoder needs TensorFlow.
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # float 0..16 -> uint8 (exact)
        labels = digits.target.astype(np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)),
            test_size=DIGITS_TEST_SIZE,
            stratify=labels,
            random_state=DIGITS_SPLIT_SEED,
        )
        return {
            "train": self._generate_examples(images, labels, np.sort(train_idx)),
            "test": self._generate_examples(images, labels, np.sort(test_idx)),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i]), "index": int(i)}


class Mnist1d(_OfflineBuilder):
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package.

    Generated with ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` - the
    package's default arguments (5000 samples, ``train_split=0.8``, ``final_seq_length=40``,
    ``seed=42``). ``make_dataset`` builds the data in memory and never downloads (unlike
    ``get_dataset``, which is not used). The package already centres the whole set to mean 0,
    std 1. The global NumPy / ``random`` RNG state that ``make_dataset`` reseeds is restored
    afterwards.

    Features:
      * ``image``: float32 ``(40, 1)``: the length-40 signal (``final_seq_length``), one channel
        (stored as float32; the package produces float64).
      * ``label``: ``ClassLabel(num_classes=10)``.
      * ``index``: int64, the example's position in the package's train or test array.

    Splits: as the package produces them, ``train`` = first 4000, ``test`` = last 1000, stored
    in the package's order.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d default args, seed 42, 4000/1000."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST-1D generated with the package's default args (seed 42).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(40, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        data = generate_mnist1d()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, xs, ys):
        for i in range(len(ys)):
            yield i, {
                "image": xs[i].astype(np.float32)[:, None],
                "label": int(ys[i]),
                "index": i,
            }


def generate_mnist1d(seed: int = MNIST1D_SEED) -> dict:
    """``mnist1d.data.make_dataset`` with default args and ``seed``.

    No download (``make_dataset`` generates in memory), and NumPy's and Python's global RNG
    states, which ``make_dataset`` reseeds, are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "sklearn_digits": SklearnDigits,
    "mnist1d": Mnist1d,
}


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (works across processes and across threads)."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder for offline data set ``name``, building it if needed.

    Args:
      name: a key of :data:`OFFLINE_BUILDERS`.
      data_dir: root directory; default :func:`default_data_dir`.

    Safe under concurrent first use: the check-and-build runs under an exclusive file lock in
    ``data_dir``, and the builder is re-created after the lock is taken so a process that waited
    sees the finished data set and does not rebuild it.
    """
    if name not in OFFLINE_BUILDERS:
        raise ValueError(f"No offline builder {name!r}; valid: {sorted(OFFLINE_BUILDERS)}.")
    cls = OFFLINE_BUILDERS[name]
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    builder = cls(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():  # Fast path: no lock.
        return builder
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, f".jaxkd_{name}.lock")):
        builder = cls(data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
            builder = cls(data_dir=data_dir, file_format="array_record")
    return builder
