"""What the diffusion driver trains on: a toy 2-D distribution, or the 8x8 digits by class.

A task gives the driver the shape of one sample, the number of classes (0: unconditional),
``sample(key, n) -> (x0, labels or None)`` in the units the models see, and the metrics of a
sample set. Registry: :data:`TASKS`; :func:`get` builds one from ``config.data``.

- :class:`ToyTask`: a :mod:`jaxkd.diffusion.toy` distribution (fresh samples of the known
  density every step; metrics ``swd``, ``mmd``, ``logdensity``, ``mode_coverage``, ``off_mode``).
- :class:`DigitsTask`: scikit-learn's 8x8 digits (the 1437-image train split), class-
  conditional; pixels 0..16 mapped to ``x = p / 8 - 1`` in [-1, 1]. Samples come back in the
  data set's own layout and units (``[N, 8, 8, 1]``, 0..16) via :meth:`DigitsTask.to_stored`.
  Metrics ``fd`` (Frechet distance on the features of an in-project digits classifier against
  the train split) and ``class_acc`` (how often that classifier recognises the requested class):
  :mod:`jaxkd.diffusion.image_metrics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.diffusion import metrics as toy_metrics
from jaxkd.diffusion import toy

__all__ = ["DigitsTask", "TASKS", "ToyTask", "get"]


@dataclasses.dataclass(frozen=True)
class ToyTask:
    """A toy 2-D distribution with a known density; unconditional."""

    dist: Any
    num_classes: ClassVar[int] = 0
    shape: ClassVar[tuple[int, ...]] = (2,)
    metric_names: ClassVar[tuple[str, ...]] = ("swd", "mmd", "logdensity", "mode_coverage",
                                               "off_mode")

    @property
    def name(self) -> str:
        return self.dist.name

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, None]:
        return self.dist.sample(key, n), None

    def eval_labels(self, n: int) -> None:
        del n
        return None

    def to_stored(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)

    def reference(self, key: jax.Array, n: int) -> np.ndarray:
        """``n`` true samples (the first panel of the plots)."""
        return np.asarray(self.dist.sample(key, n))

    def evaluate(self, x: np.ndarray, labels: None, key: jax.Array) -> dict[str, float]:
        del labels
        return toy_metrics.evaluate_samples(x, self.dist, key, reference_n=len(x))


@dataclasses.dataclass(frozen=True, eq=False)
class DigitsTask:
    """scikit-learn's digits, class-conditional; models see ``p / 8 - 1`` (pixels ``p`` 0..16).

    ``evaluator`` (an :class:`jaxkd.diffusion.image_metrics.ImageEvaluator`) is attached by
    :meth:`with_evaluator` when the driver evaluates (its classifier trains once).
    """

    images: jax.Array  # [N, 8, 8, 1] in [-1, 1]
    labels: jax.Array  # [N] int32
    evaluator: Any = None
    num_classes: ClassVar[int] = 10
    shape: ClassVar[tuple[int, ...]] = (8, 8, 1)
    metric_names: ClassVar[tuple[str, ...]] = ("fd", "class_acc")
    name: ClassVar[str] = "sklearn_digits"

    @classmethod
    def load(cls, data_dir: str | None = None) -> DigitsTask:
        from jaxkd.data import datasets  # pylint: disable=g-import-not-at-top
        images, labels = datasets.load("sklearn_digits", "train", data_dir=data_dir,
                                       in_memory=True).arrays()
        return cls(jnp.asarray(cls.from_stored(images)), jnp.asarray(labels, jnp.int32))

    @staticmethod
    def from_stored(images: np.ndarray) -> np.ndarray:
        return np.asarray(images, np.float32) / 8.0 - 1.0

    @staticmethod
    def to_stored(x: np.ndarray) -> np.ndarray:
        """Model units back to the data set's: ``[N, 8, 8, 1]`` float32 pixels clipped to 0..16."""
        return np.clip((np.asarray(x, np.float32) + 1.0) * 8.0, 0.0, 16.0)

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        idx = jax.random.randint(key, (n,), 0, self.images.shape[0])
        return self.images[idx], self.labels[idx]

    def eval_labels(self, n: int) -> np.ndarray:
        """The requested classes of ``n`` evaluation samples: 0, 1, ..., 9, 0, 1, ... (balanced)."""
        return (np.arange(n) % self.num_classes).astype(np.int32)

    def reference(self, key: jax.Array, n: int) -> np.ndarray:
        """Real train images, ``n`` of them (class order as :meth:`eval_labels`), model units."""
        labels = np.asarray(self.labels)
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 30)))
        idx = [rng.choice(np.flatnonzero(labels == c)) for c in self.eval_labels(n)]
        return np.asarray(self.images)[idx]

    def with_evaluator(self, directory: str, seed: int = 0, steps: int | None = None
                       ) -> DigitsTask:
        from jaxkd.diffusion import image_metrics  # pylint: disable=g-import-not-at-top
        classifier = image_metrics.load_or_train(
            directory, seed=seed, steps=steps or image_metrics.DEFAULT_STEPS)
        return dataclasses.replace(self, evaluator=image_metrics.ImageEvaluator(classifier))

    def evaluate(self, x: np.ndarray, labels: np.ndarray, key: jax.Array) -> dict[str, float]:
        del key
        if self.evaluator is None:
            raise RuntimeError("DigitsTask.evaluate needs the classifier: task.with_evaluator(dir)")
        if not np.all(np.isfinite(x)):  # a diverged model: reported, not a crash after training
            return {"fd": float("nan"), "class_acc": float("nan")}
        return dict(self.evaluator.evaluate(self.to_stored(x), labels))


TASKS = (*sorted(toy.DISTRIBUTIONS), "sklearn_digits")


def get(name: str, kwargs: dict | None = None, data_dir: str | None = None):
    """The task of ``config.data.name``: a toy distribution (``kwargs``: its fields) or digits."""
    if name == "sklearn_digits":
        if kwargs:
            raise ValueError(f"sklearn_digits takes no data kwargs; got {sorted(kwargs)}")
        return DigitsTask.load(data_dir)
    return ToyTask(toy.get(name, **(kwargs or {})))
