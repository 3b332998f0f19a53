"""Dataset registry and loading: ``DATASETS`` and ``load(name, split)``.

Two kinds of entries:

* offline builders (``sklearn_digits``, ``mnist1d``, see :mod:`jaxkd.data.builders`): prepared
  automatically on first use into ``data_dir`` or the jaxkd cache
  (:func:`jaxkd.data.builders.default_data_dir`);
* standard tfds data sets (``mnist``, ``cifar10``, ``cifar100``, ``imagenet2012``): read with
  ``tfds.data_source`` from a directory where they were already prepared in ``array_record``
  format. jaxkd never downloads them; if one is missing, :class:`DatasetNotPreparedError` says
  where it looked and how to prepare it.

Normalisation constants (``info.mean`` / ``info.std``) are per channel and in the **units of the
stored data**, so every pipeline normalises with ``(x - mean) / std`` on the raw values:
0..255 for the uint8 tfds images, 0..16 for ``sklearn_digits``, the package's float values for
``mnist1d``.
"""

from __future__ import annotations

import abc

import concurrent.futures
import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxkd.data import builders

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "IN_MEMORY_MAX_BYTES",
    "ArraySource",
    "Source",
    "TfdsSource",
    "load",
]

# Splits whose decoded images take fewer bytes than this are loaded whole into memory.
IN_MEMORY_MAX_BYTES = 256 * 2**20


class DatasetNotPreparedError(ValueError):
    """A standard tfds data set is not prepared (in array_record format) where jaxkd looked."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A registry entry.

    Attributes:
      name: registry key (also the tfds name).
      splits: the labelled splits that ``load`` accepts (tfds slicing such as ``"train[:90%]"``
        and ``"+"`` unions of these are accepted too).
      eval_split: the split to report results on (``"validation"`` for ImageNet).
      num_classes: number of labels.
      shape: per-example shape, HWC for images, ``(L, C)`` for sequences; ``None`` for a
        dimension that varies between examples (ImageNet).
      dtype: dtype of the stored example.
      mean, std: per-channel normalisation constants, in stored units (see module docstring).
      offline: built locally by :mod:`jaxkd.data.builders` (no preparation needed).
    """

    name: str
    splits: tuple[str, ...]
    eval_split: str
    num_classes: int
    shape: tuple[int | None, ...]
    dtype: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    offline: bool = False


def _scaled(values: Sequence[float], scale: float = 255.0) -> tuple[float, ...]:
    return tuple(float(v) * scale for v in values)


DATASETS: dict[str, DatasetSpec] = {
    # Train-split pixel mean / std over all 1437 x 64 pixels, values 0..16, computed once with
    # `load_digits().images[train_idx]` (float64) for the documented split and hard-coded.
    "sklearn_digits": DatasetSpec(
        name="sklearn_digits", splits=("train", "test"), eval_split="test", num_classes=10,
        shape=(8, 8, 1), dtype=np.uint8, mean=(4.886134,), std=(6.017907,), offline=True,
    ),
    # Train-split mean / std over all 4000 x 40 float32 values, computed once and hard-coded.
    # (The mnist1d package already centres the whole 5000-example set to mean 0, std 1.)
    "mnist1d": DatasetSpec(
        name="mnist1d", splits=("train", "test"), eval_split="test", num_classes=10,
        shape=(40, 1), dtype=np.float32, mean=(-0.000324,), std=(0.997648,), offline=True,
    ),
    # The standard published constants (as in the PyTorch examples): 0.1307, 0.3081 on 0..1.
    "mnist": DatasetSpec(
        name="mnist", splits=("train", "test"), eval_split="test", num_classes=10,
        shape=(28, 28, 1), dtype=np.uint8, mean=_scaled([0.1307]), std=_scaled([0.3081]),
    ),
    # CIFAR train-set per-channel pixel mean / std on 0..1 (the std over all pixels; the often
    # copied (0.2023, 0.1994, 0.2010) is a mean of per-image stds and is not used here).
    "cifar10": DatasetSpec(
        name="cifar10", splits=("train", "test"), eval_split="test", num_classes=10,
        shape=(32, 32, 3), dtype=np.uint8,
        mean=_scaled([0.4914, 0.4822, 0.4465]), std=_scaled([0.2470, 0.2435, 0.2616]),
    ),
    "cifar100": DatasetSpec(
        name="cifar100", splits=("train", "test"), eval_split="test", num_classes=100,
        shape=(32, 32, 3), dtype=np.uint8,
        mean=_scaled([0.5071, 0.4865, 0.4409]), std=_scaled([0.2673, 0.2564, 0.2762]),
    ),
    # The standard ImageNet constants (torchvision / big_vision "vgg" normalisation).
    # Images vary in size: pipelines crop/resize to `AugmentConfig.image_size`.
    "imagenet2012": DatasetSpec(
        name="imagenet2012", splits=("train", "validation"), eval_split="validation",
        num_classes=1000, shape=(None, None, 3), dtype=np.uint8,
        mean=_scaled([0.485, 0.456, 0.406]), std=_scaled([0.229, 0.224, 0.225]),
    ),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline or model needs to know about one loaded split."""

    name: str
    split: str
    num_classes: int
    shape: tuple[int | None, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_examples: int


class Source(abc.ABC):
    """A random-access split: ``len(src)``, ``src[i] -> {"image", "label"}``, ``src.info``.

    Subclasses: :class:`ArraySource` (whole split in memory as NumPy arrays, ``.arrays()``) and
    :class:`TfdsSource` (records read and decoded on demand).
    """

    info: DatasetInfo
    in_memory: bool = False

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples in the split."""

    @abc.abstractmethod
    def __getitem__(self, i: int) -> dict[str, Any]:
        """Example ``i`` as ``{"image": ndarray, "label": int}``."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError(
            f"{self.info.name}/{self.info.split} is not held in memory; read it with src[i]"
        )

    def __repr__(self) -> str:
        i = self.info
        return (f"{type(self).__name__}({i.name}/{i.split}, n={i.num_examples}, "
                f"shape={i.shape}, classes={i.num_classes})")


class ArraySource(Source):
    """A split held in memory: ``images [N, *shape]`` and ``labels [N]`` (int32).

    Also the way to feed arrays made elsewhere (e.g. distilled images) to ``make_pipeline``.
    """

    in_memory = True

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim < 2 or labels.shape != (images.shape[0],):
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
        if tuple(images.shape[1:]) != tuple(info.shape):
            raise ValueError(f"images {images.shape[1:]} do not match info.shape {info.shape}")
        self.images = images
        self.labels = labels.astype(np.int32, copy=False)
        self.info = dataclasses.replace(info, num_examples=len(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": int(self.labels[i])}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images, self.labels


class TfdsSource(Source):
    """A split read record by record from a tfds ``array_record`` data source."""

    def __init__(self, data_source: Sequence[dict], info: DatasetInfo):
        self._ds = data_source
        self.info = info

    def __len__(self) -> int:
        return len(self._ds)

    @staticmethod
    def _example(record: dict) -> dict[str, Any]:
        return {"image": np.asarray(record["image"]), "label": int(record["label"])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        return self._example(self._ds[int(i) % n])



# ----------------------------------------------------------------------------------- loading
def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name]


def _check_split(spec: DatasetSpec, split: str) -> None:
    for part in str(split).split("+"):
        base = part.strip().split("[", 1)[0].strip()
        if base not in spec.splits:
            raise ValueError(
                f"Unknown split {split!r} for dataset {spec.name!r}; valid splits: "
                f"{list(spec.splits)} (tfds slices such as 'train[:90%]' are accepted)"
            )


def _not_prepared(
    spec: DatasetSpec, split: str, data_dir: str, detail: str
) -> DatasetNotPreparedError:
    manual = ""
    if spec.name == "imagenet2012":
        manual = (" --manual_dir=DIR_WITH_ILSVRC2012_img_train.tar_AND_img_val.tar"
                  " (ImageNet must be downloaded by hand from image-net.org)")
    return DatasetNotPreparedError(
        f"Dataset {spec.name!r} (split {split!r}) is not prepared in array_record format under "
        f"data_dir={data_dir!r} ({detail}). jaxkd reads standard tfds datasets with "
        f"tfds.data_source and never downloads them. Prepare it on a machine with internet "
        f"access:\n    tfds build {spec.name} --file_format=array_record --data_dir=DIR{manual}\n"
        f"then make DIR available here and pass --config.data.data_dir=DIR (or set "
        f"TFDS_DATA_DIR=DIR)."
    )


def _tfds_data_source(spec: DatasetSpec, split: str, data_dir: str | None):
    # Resolved here (not left to tfds) so $TFDS_DATA_DIR is read now and the error names it.
    data_dir = os.path.expanduser(data_dir or tfds.core.constants.get_default_data_dir())
    try:
        return tfds.data_source(spec.name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - narrowed below by asking the builder.
        try:
            builder = tfds.builder(spec.name, data_dir=data_dir)
            prepared = builder.is_prepared()
            where = builder.data_dir
        except Exception:  # noqa: BLE001
            prepared, where = False, os.path.join(data_dir, spec.name)
        if not prepared:
            raise _not_prepared(spec, split, data_dir, f"nothing found at {where}") from e
        if isinstance(e, NotImplementedError):  # Prepared, but as tfrecord.
            raise _not_prepared(
                spec, split, data_dir, f"{where} holds another file format: {e}"
            ) from e
        raise


def _read_all(ds: Sequence[dict], n: int, shape, dtype) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((n, *shape), dtype=dtype)
    labels = np.empty((n,), dtype=np.int32)
    chunk = 2048

    def read(start: int) -> None:
        stop = min(n, start + chunk)
        # Record by record: tfds' `__getitems__` is not supported by `tfds.testing.mock_data`.
        for i in range(start, stop):
            r = ds[i]
            images[i] = r["image"]
            labels[i] = r["label"]

    # Threads overlap record reads and image decoding (PIL releases the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        list(ex.map(read, range(0, n, chunk)))
    return images, labels


def load(
    name: str, split: str, *, data_dir: str | None = None, in_memory: bool | None = None
) -> Source:
    """Loads split ``split`` of registry entry ``name``.

    Args:
      name: a key of :data:`DATASETS`.
      split: one of ``DATASETS[name].splits`` (or a tfds slice / union of them).
      data_dir: for standard tfds data sets, where they were prepared (default ``$TFDS_DATA_DIR``
        or ``~/tensorflow_datasets``); for offline builders, where to prepare them (default
        :func:`jaxkd.data.builders.default_data_dir`).
      in_memory: hold the split in memory as NumPy arrays (:class:`ArraySource`). Default: when
        examples have a fixed shape and the split is under :data:`IN_MEMORY_MAX_BYTES`.

    Raises:
      ValueError: unknown name (lists the valid ones) or split (lists the valid ones).
      DatasetNotPreparedError: a standard tfds data set is not prepared under ``data_dir``.
    """
    spec = _spec(name)
    _check_split(spec, split)
    if spec.offline:
        ds = builders.prepare(name, data_dir).as_data_source(split=split)
    else:
        ds = _tfds_data_source(spec, split, data_dir)
    n = len(ds)
    info = DatasetInfo(
        name=name, split=split, num_classes=spec.num_classes, shape=spec.shape,
        mean=spec.mean, std=spec.std, num_examples=n,
    )
    fixed = all(d is not None for d in spec.shape)
    if in_memory is None:
        nbytes = n * math.prod(spec.shape) * np.dtype(spec.dtype).itemsize if fixed else math.inf
        in_memory = nbytes < IN_MEMORY_MAX_BYTES
    if in_memory:
        if not fixed:
            raise ValueError(f"{name} has variable-size examples and cannot be held in memory")
        images, labels = _read_all(ds, n, spec.shape, spec.dtype)
        return ArraySource(images, labels, info)
    return TfdsSource(ds, info)
