"""Cached teacher outputs (dataset reinforcement, Faghri et al. 2023): run a teacher once, reuse it.

    manifest = build_cache(path, teacher=teacher, source=train_src, augment=augment,
                           num_samples=4, top_k=10, seed=0, batch_size=256, mesh=mesh,
                           teacher_sha256=teacher_meta["sha256"])
    cache = load_cache(path, source=train_src, teacher_sha256=..., num_classes=10)
    pipeline = make_cache_pipeline(cache, train_src, global_batch_size=128, seed=seed)
    step = steps.make_train_step(model, tx, ..., teacher=cached_teacher(10))

**What is stored.** For every training example ``i`` and sample ``j < S`` (``S = num_samples``)
the augmentation parameters are drawn from ``np.random.default_rng([seed, 3, i, j])`` (in this
order: inception-crop uniforms ``[10, 4]``, crop offsets ``[ndim]``, flip; with mixup then the
partner index uniform in ``[0, N)``, ``lam ~ Beta(alpha, alpha)`` and the partner's own crop /
offsets / flip). The augmented input is built with the pipeline's own functions
(:mod:`jaxkd.data.augment`, ``(x - info.mean) / info.std``, ``lam * x + (1 - lam) * x_partner``),
the teacher runs on it (jitted, batched, sharded over the mesh), and the cache keeps, as ``.npy``
arrays of shape ``[N, S, ...]``:

* ``topk_logprob [N, S, k]``: the top-k teacher log-probabilities ``logit - logsumexp(logits)``,
  float32 by default or float16 (``dtype="float16"``). Log-probabilities rather than raw logits
  because they are <= 0 with the large probabilities near 0, where float16 is most precise:
  a float16 log-probability is off by at most ``|log p| * 2**-11``, i.e. a probability's relative
  error is ~0.05 % x ``|log p|`` (measured on digits: max ``|p16 - p32|`` = 1.6e-4). float16 does
  make the top-k's leftover mass ``1 - sum(p_topk)`` uncertain by ~1e-3, so prefer float32 when
  ``top_k < C`` and the tail matters (high temperatures);
* ``topk_index [N, S, k]``: their classes (uint8 for <= 256 classes, else int16 / int32);
* ``lse [N, S]``: float32 ``logsumexp`` of the full logits, so the top-k logits are
  ``topk_logprob + lse`` (to one float32 rounding);
* the replayable augmentation: ``offset [N, S, ndim]`` int16, ``flip [N, S]`` bool,
  ``box [N, S, 4]`` int32 ``(top, left, h, w)``, ``partner [N, S]`` int32, ``lam [N, S]``
  float32 and ``partner_offset`` / ``partner_flip`` / ``partner_box``, as configured.

plus ``manifest.json`` (format version, data set, sizes, augmentation, seed, teacher hash, bytes
per example). A cache is written into a temporary sibling directory and renamed into place only
once complete, so an interrupted build never leaves a directory that looks valid.

**Training from it.** :func:`make_cache_pipeline` visits examples in the same order as
:func:`jaxkd.data.make_pipeline` with the same seed; example ``i`` in epoch ``e`` replays sample
``(o_i + e) mod S`` with ``o_i`` drawn once from ``default_rng([seed, 2])``, so any ``S``
consecutive epochs use every stored sample of every example exactly once. Batches carry
``teacher_topk_logits``, ``teacher_topk_index`` and ``teacher_lse``; :func:`cached_teacher`
turns them into full ``[B, C]`` teacher log-probabilities (:func:`topk_to_logits`) through the
same :class:`~jaxkd.kd.steps.Teacher` interface as a live teacher.

**Exactness.** With ``top_k == C`` (and float32 storage) the teacher row is
``log_softmax(logits)`` up to float32 rounding. The logit distillation losses (``hinton``,
``dkd``, ``dist``) see the teacher only through ``softmax(t / T)``, and ``softmax((logits - lse) / T) = softmax(logits / T)`` (a per-row shift
cancels), so the KD loss equals the live teacher's exactly (to float32 rounding, ~1e-6). With
``top_k < C`` the top-k probabilities are still exact and the remaining mass
``1 - sum(p_topk)`` is exact up to rounding (~1e-7 absolute in float32, ~1e-3 in float16), but
it is spread *evenly* over the other ``C - k`` classes. After temperature ``T > 1`` the tail's
softened mass ``sum_tail p_i^(1/T)`` is over-estimated (by Jensen, a uniform tail maximises it),
the teacher's ranking within the tail is lost, and losses that use the label's teacher
probability (DKD) see the tail mean when the label is outside the top-k.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxkd import data as data_lib
from jaxkd.core import errors, sharding
from jaxkd.core.progress import Progress
from jaxkd.data import augment as aug_lib
from jaxkd.data import datasets as datasets_lib
from jaxkd.data import pipeline as pipeline_lib
from jaxkd.kd import steps

__all__ = [
    "Cache",
    "CachePipeline",
    "FORMAT",
    "VERSION",
    "build_cache",
    "cached_teacher",
    "load_cache",
    "make_cache_pipeline",
    "topk_to_logits",
]

FORMAT = "jaxkd.teacher_cache"
VERSION = 1
MANIFEST = "manifest.json"
# pylint: disable=protected-access  (shared with make_pipeline, so the two stay in step)
_SHUFFLE = pipeline_lib._SHUFFLE
_INCEPTION_ATTEMPTS = pipeline_lib._INCEPTION_ATTEMPTS
_EVAL_CROP_PADDING = pipeline_lib._EVAL_CROP_PADDING
# pylint: enable=protected-access
_SAMPLE, _DRAW = 2, 3  # RNG stream tags: which stored sample a row replays; augmentation draws.
_DTYPES = ("float32", "float16")
_IN_MEMORY_MAX_BYTES = datasets_lib.IN_MEMORY_MAX_BYTES
_TAIL_FLOOR = 1e-30  # Least leftover mass spread over the non-top-k classes (keeps log finite).

_BUILD_HINT = ("build it with jaxkd.kd.cache.build_cache(path, teacher=..., source=..., "
               "augment=..., num_samples=..., top_k=..., seed=..., batch_size=..., mesh=..., "
               "teacher_sha256=...)")


# ------------------------------------------------------------------------------ augmentation
class _Augmenter:
    """Draws, and replays, the pipeline's training augmentation for given example indices."""

    def __init__(self, source, augment: data_lib.AugmentConfig, seed: int):
        try:  # The pipeline validates the combination and decides the output shape.
            probe = data_lib.make_pipeline(source, global_batch_size=1, seed=0, train=True,
                                           augment=augment, prefetch=0, num_threads=1)
        except ValueError as e:
            raise errors.ConfigError(f"teacher cache: {e}") from None
        probe.close()
        self.source, self.augment, self.seed = source, augment, int(seed)
        self.info = source.info
        self.num_examples = len(source)
        self.output_shape = tuple(probe.output_shape)
        shape = tuple(self.info.shape)
        fixed = all(d is not None for d in shape)
        # As the pipeline: examples are cropped/resized one by one (PIL) when the output size
        # differs from the stored one or with inception crop; variable-size images get the
        # eval central crop when there is no inception crop.
        self.size = (self.output_shape[0]
                     if augment.inception_crop or self.output_shape != shape else None)
        self.center_fraction = 1.0 if fixed else self.size / (self.size + _EVAL_CROP_PADDING)
        self.in_memory = bool(getattr(source, "in_memory", False))
        self._images, self._labels = source.arrays() if self.in_memory else (None, None)
        reps = int(np.prod(self.output_shape[:-1]))
        self._mean = np.tile(np.asarray(self.info.mean, np.float32), reps)
        self._std = np.tile(np.asarray(self.info.std, np.float32), reps)
        self.ndim = len(self.output_shape) - 1

    # Names and per-row trailing shapes / dtypes of the stored augmentation parameters.
    def param_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        a, out = self.augment, {}
        for prefix in ("", "partner_") if a.mixup_alpha > 0 else ("",):
            if a.inception_crop:
                out[prefix + "box"] = ((4,), "int32")
            if a.random_crop_padding:
                out[prefix + "offset"] = ((self.ndim,), "int16")
            if a.random_flip:
                out[prefix + "flip"] = ((), "bool")
            if not prefix and a.mixup_alpha > 0:
                out["partner"] = ((), "int32")
                out["lam"] = ((), "float32")
        return out

    def draw(self, idx: np.ndarray, j: int) -> dict[str, np.ndarray]:
        """Draws of examples ``idx`` for sample ``j``; inception crops as uniforms (``box_u``)."""
        a, n = self.augment, len(idx)
        p = a.random_crop_padding
        out: dict[str, np.ndarray] = {}
        prefixes = ("", "partner_") if a.mixup_alpha > 0 else ("",)
        for prefix in prefixes:
            if a.inception_crop:
                out[prefix + "box_u"] = np.empty((n, _INCEPTION_ATTEMPTS, 4))
            if p:
                out[prefix + "offset"] = np.empty((n, self.ndim), np.int16)
            if a.random_flip:
                out[prefix + "flip"] = np.empty(n, bool)
        if a.mixup_alpha > 0:
            out["partner"] = np.empty(n, np.int32)
            out["lam"] = np.empty(n, np.float32)
        for r, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, _DRAW, int(i), int(j)])
            for prefix in prefixes:
                if prefix:
                    out["partner"][r] = rng.integers(0, self.num_examples)
                    out["lam"][r] = rng.beta(a.mixup_alpha, a.mixup_alpha)
                if a.inception_crop:
                    out[prefix + "box_u"][r] = rng.random(out[prefix + "box_u"].shape[1:])
                if p:
                    out[prefix + "offset"][r] = rng.integers(0, 2 * p + 1, size=self.ndim)
                if a.random_flip:
                    out[prefix + "flip"][r] = rng.random() < 0.5
        return out

    def render(self, idx: np.ndarray, params: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The normalised, augmented batch of examples ``idx`` under ``params``.

        ``params`` holds boxes either as ``box`` (replay) or as uniforms ``box_u`` (build).
        Returns ``(batch, boxes)``: ``{"image", "label"[, "label2", "lam"]}`` and the crop
        boxes used (``{"box"[, "partner_box"]}``, empty without inception crop).
        """
        a, b = self.augment, len(idx)
        mix = a.mixup_alpha > 0

        def both(name):
            if name not in params:
                return None
            return (np.concatenate([params[name], params["partner_" + name]]) if mix
                    else params[name])

        need = np.concatenate([idx, params["partner"]]) if mix else idx
        x, labels, boxes = self._fetch(need, both("box"), both("box_u"))
        offsets, flips = both("offset"), both("flip")
        if offsets is not None or flips is not None:
            x = aug_lib.crop_and_flip(x, offsets, flips, a.random_crop_padding)
        # Exactly the pipeline's normalisation (same float32 operations, same order).
        x = x.reshape(len(x), -1).astype(np.float32)
        x -= self._mean
        x /= self._std
        x = x.reshape(len(x), *self.output_shape)
        out = {"label": labels[:b]}
        if mix:
            out["image"] = aug_lib.mixup(x[:b], x[b:], params["lam"])
            out["label2"] = labels[b:]
            out["lam"] = params["lam"].astype(np.float32)
        else:
            out["image"] = x
        used = {}
        if boxes is not None:
            used["box"] = boxes[:b]
            if mix:
                used["partner_box"] = boxes[b:]
        return out, used

    def _fetch(self, idx, boxes, boxes_u):
        """Raw examples ``[n, *output_shape]``, int32 labels and the crop boxes (or None)."""
        if not self.size:
            if self.in_memory:
                return self._images[idx], self._labels[idx], None
            exs = [self.source[int(i)] for i in idx]
            x = np.stack([e["image"] for e in exs])
            return x, np.asarray([e["label"] for e in exs], np.int32), None
        n = len(idx)
        x = np.empty((n, *self.output_shape), np.uint8)
        labels = np.empty(n, np.int32)
        used = np.empty((n, 4), np.int32)
        for r, i in enumerate(idx):
            if self.in_memory:
                image, label = self._images[i], self._labels[i]
            else:
                ex = self.source[int(i)]
                image, label = ex["image"], ex["label"]
            h, w = image.shape[:2]
            if boxes is not None:
                box = tuple(int(v) for v in boxes[r])
            elif boxes_u is not None:
                box = aug_lib.random_resized_crop_box(h, w, boxes_u[r])
            elif self.center_fraction < 1.0:
                box = aug_lib.center_crop_box(h, w, self.center_fraction)
            else:
                box = (0, 0, h, w)
            x[r] = aug_lib.crop_resize(image, box, self.size)
            labels[r], used[r] = label, box
        return x, labels, used if self.augment.inception_crop else None


# -------------------------------------------------------------------------------- manifest
def _dataset_record(source) -> dict[str, Any]:
    info = source.info
    rec = {"name": info.name, "split": info.split, "num_examples": len(source),
           "shape": list(info.shape), "num_classes": info.num_classes}
    if getattr(source, "in_memory", False):
        rec["labels_sha256"] = hashlib.sha256(
            np.ascontiguousarray(source.arrays()[1], np.int32).tobytes()).hexdigest()
    return rec


def _index_dtype(num_classes: int) -> str:
    return "uint8" if num_classes <= 256 else "int16" if num_classes <= 32767 else "int32"


def _array_specs(manifest: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Expected ``{name: (shape, dtype)}`` of every stored array, from the manifest alone."""
    n, s, k = manifest["num_examples"], manifest["num_samples"], manifest["top_k"]
    specs = {
        "topk_logprob": ((n, s, k), manifest["dtype"]),
        "topk_index": ((n, s, k), _index_dtype(manifest["num_classes"])),
        "lse": ((n, s), "float32"),
    }
    for name, (trail, dtype) in manifest["params"].items():
        specs[name] = ((n, s, *trail), dtype)
    return specs


# ----------------------------------------------------------------------------------- build
def build_cache(
    path: str,
    *,
    teacher: steps.Teacher,
    source,
    augment: data_lib.AugmentConfig,
    num_samples: int,
    top_k: int,
    seed: int,
    batch_size: int,
    mesh,
    teacher_sha256: str,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Runs ``teacher`` once over ``num_samples`` augmentations of every example of ``source``.

    Args:
      path: the cache directory to create (its parent is created if needed).
      teacher: a :class:`~jaxkd.kd.steps.Teacher` (``fn(variables, batch) -> logits [B, C]``),
        evaluated on ``{"image", "label", "mask"}`` batches.
      source: the training split (a :class:`~jaxkd.data.Source`); every example is visited.
      augment: the training augmentation to sample (random crop, flip, mixup, inception crop,
        image size), as the training pipeline would apply it.
      num_samples: augmentations stored per example (``S >= 1``).
      top_k: teacher classes stored per sample (``1 <= k <= C``; ``k == C`` is exact).
      seed: fixes every augmentation draw (a function of ``(seed, example, sample)`` only).
      batch_size: teacher batch over all processes; a multiple of the mesh's batch devices.
      mesh: the ``(data, fsdp)`` mesh the teacher's variables live on.
      teacher_sha256: the teacher's content hash (``checkpoint.params_hash``), recorded so that
        :func:`load_cache` can refuse a cache made by another teacher.
      dtype: ``"float32"`` (default) or ``"float16"`` for the top-k log-probabilities.
      overwrite: replace an existing cache at ``path`` (otherwise that is an error). The old
        cache stays in place, valid, until the new one is complete.
      progress: show a progress bar (process 0 only).

    Every process must call it (the teacher runs sharded over all of them); process 0 writes,
    so ``path`` must be on a file system that all processes see. The cache is written to a
    hidden sibling ``.NAME.partial-XXXXXXXX`` and renamed to ``path`` once complete; an
    exception removes the partial directory, a hard kill (SIGKILL, power loss) may leave it
    behind (never ``path``), and it can then be deleted.

    Returns:
      The manifest (also written to ``path/manifest.json``).

    Raises:
      ConfigError: invalid sizes, ``top_k`` above the teacher's classes, a teacher whose classes
        differ from the data set's, or ``path`` already existing without ``overwrite``.
    """
    path = os.path.abspath(path)
    if num_samples < 1:
        raise errors.ConfigError(f"num_samples={num_samples} must be >= 1 (augmentations stored "
                                 f"per example)")
    if top_k < 1:
        raise errors.ConfigError(f"top_k={top_k} must be >= 1")
    if dtype not in _DTYPES:
        raise errors.ConfigError(f"dtype={dtype!r} must be one of {_DTYPES}")
    if len(source) == 0:
        raise errors.ConfigError(f"source {source!r} is empty: nothing to cache")
    if seed < 0:
        raise errors.ConfigError(f"seed={seed} must be >= 0")
    try:
        sharding.check_batch_size(batch_size, mesh, key="batch_size")
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    if os.path.exists(path) and not overwrite:
        raise errors.ConfigError(
            f"a teacher cache already exists at {path}; load it with load_cache, or pass "
            f"overwrite=True (or delete it) to rebuild it")

    aug = _Augmenter(source, augment, seed)
    n, s = len(source), num_samples
    pi, pc = jax.process_index(), jax.process_count()
    b = batch_size // pc

    # The teacher's number of classes, before anything runs.
    example = {"image": jax.ShapeDtypeStruct((batch_size, *aug.output_shape), jnp.float32),
               "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
               "mask": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}
    out_shape = jax.eval_shape(teacher.fn, teacher.variables, example).shape
    num_classes = int(out_shape[-1])
    if num_classes != source.info.num_classes:
        raise errors.ConfigError(
            f"the teacher predicts {num_classes} classes but {source.info.name} has "
            f"{source.info.num_classes}; cache a teacher trained on the same label set")
    if top_k > num_classes:
        raise errors.ConfigError(
            f"top_k={top_k} exceeds the teacher's {num_classes} classes; use top_k <= "
            f"{num_classes} (top_k={num_classes} stores the full, exact distribution)")

    batch_sh = sharding.batch_sharding(mesh)

    def outputs(variables, batch):
        logits = teacher.fn(variables, batch).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        values, index = jax.lax.top_k(logits, top_k)
        return {"topk_logprob": (values - lse[:, None]).astype(dtype),
                "topk_index": index, "lse": lse}

    run = jax.jit(outputs, in_shardings=(teacher.shardings, batch_sh), out_shardings=batch_sh)

    manifest = {
        "format": FORMAT, "version": VERSION,
        "dataset": _dataset_record(source),
        "num_examples": n, "num_samples": s, "top_k": top_k, "num_classes": num_classes,
        "dtype": dtype,
        "augment": dataclasses.asdict(augment),
        "output_shape": list(aug.output_shape),
        "seed": int(seed),
        "teacher_sha256": str(teacher_sha256),
        "params": {k: [list(t), d] for k, (t, d) in aug.param_specs().items()},
    }
    specs = _array_specs(manifest)
    manifest["bytes_per_example"] = sum(
        int(np.prod(shape[1:])) * np.dtype(d).itemsize for shape, d in specs.values())
    manifest["bytes_per_sample"] = manifest["bytes_per_example"] / s

    # Process 0 writes into a temporary sibling, renamed into place once complete.
    writer = pi == 0
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    arrays: dict[str, np.ndarray] = {}
    if writer:
        os.makedirs(parent, exist_ok=True)
        os.makedirs(tmp)
    try:
        if writer:
            for key, (shape, d) in specs.items():
                arrays[key] = np.lib.format.open_memmap(
                    os.path.join(tmp, key + ".npy"), mode="w+", dtype=d, shape=shape)
        chunks = -(-n // batch_size)
        with Progress(s * chunks, desc="teacher cache", unit="batch",
                      enabled=progress and writer, batch_size=batch_size) as bar:
            for j in range(s):
                for c in range(chunks):
                    lo = c * batch_size
                    rows = np.arange(lo, lo + batch_size)
                    valid = rows < n
                    rows[~valid] = 0
                    mine = rows[pi * b:(pi + 1) * b]
                    draws = aug.draw(mine, j)
                    batch, boxes = aug.render(mine, draws)
                    params = {k: v for k, v in draws.items() if not k.endswith("box_u")}
                    params.update(boxes)
                    batch = {"image": batch["image"], "label": batch["label"],
                             "mask": valid[pi * b:(pi + 1) * b].astype(np.float32)}
                    out = run(teacher.variables, sharding.to_global_batch(batch, mesh))
                    if pc > 1:
                        out, params = multihost_utils.process_allgather((out, params), tiled=True)
                    if writer:
                        m = int(valid.sum())
                        host = jax.device_get(out)
                        for key, value in {**host, **params}.items():
                            arrays[key][lo:lo + m, j] = np.asarray(value)[:m]
                    bar.update(j * chunks + c + 1)
        if writer:
            for arr in arrays.values():
                arr.flush()
            arrays.clear()
            _fsync_tree(tmp)
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(path):  # overwrite=True: move the old one aside first.
                old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
            _fsync_dir(parent)
    except BaseException:
        arrays.clear()
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if pc > 1:
        multihost_utils.sync_global_devices(f"jaxkd teacher cache {path}")
    return manifest


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for entry in os.listdir(path):
        with open(os.path.join(path, entry), "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path)


# ------------------------------------------------------------------------------------ load
@dataclasses.dataclass(frozen=True)
class Cache:
    """A validated teacher cache: its manifest and arrays (``[N, S, ...]``, maybe memory-mapped)."""

    path: str
    manifest: dict
    arrays: dict[str, np.ndarray]

    num_examples = property(lambda self: self.manifest["num_examples"])
    num_samples = property(lambda self: self.manifest["num_samples"])
    top_k = property(lambda self: self.manifest["top_k"])
    num_classes = property(lambda self: self.manifest["num_classes"])
    seed = property(lambda self: self.manifest["seed"])
    teacher_sha256 = property(lambda self: self.manifest["teacher_sha256"])

    @property
    def augment(self) -> data_lib.AugmentConfig:
        return data_lib.AugmentConfig(**self.manifest["augment"])

    @property
    def nbytes(self) -> int:
        """Bytes of all stored arrays (the ``.npy`` headers excluded)."""
        return sum(int(a.nbytes) for a in self.arrays.values())


def load_cache(path: str, *, source, teacher_sha256: str | None = None,
               num_classes: int | None = None, augment: data_lib.AugmentConfig | None = None,
               num_samples: int | None = None, top_k: int | None = None,
               in_memory: bool | None = None) -> Cache:
    """Opens and validates the cache at ``path`` for training on ``source``.

    Args:
      path: a directory written by :func:`build_cache`.
      source: the training split it must have been built from (size, name, labels checked).
      teacher_sha256: when given, the cache must come from this teacher.
      num_classes: when given, the cache must have this many classes.
      augment, num_samples, top_k: when given, what the cache must have been built with (the
        training config's values), so that a config change is not silently ignored.
      in_memory: read the arrays into memory (default: when they take <= 256 MiB), otherwise
        memory-map them.

    Raises:
      ConfigError: one message naming the problem and the fix, for a missing directory or
        manifest, an unknown format version, an empty cache, ``top_k > num_classes``, a cache
        built for other data, classes, teacher or settings, and missing, truncated or
        wrong-shaped arrays.
    """
    path = os.path.abspath(path)
    rebuild = f"delete {path} and rebuild it with jaxkd.kd.cache.build_cache"
    if not os.path.isdir(path):
        raise errors.ConfigError(f"no teacher cache at {path}: {_BUILD_HINT}")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise errors.ConfigError(
            f"{path} has no {MANIFEST}, so it is not a complete teacher cache (build_cache only "
            f"ever renames finished caches into place): {rebuild}")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise errors.ConfigError(f"{mpath} cannot be read ({e}): {rebuild}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise errors.ConfigError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this jaxkd reads {FORMAT!r} version {VERSION}: {rebuild}")
    required = ("dataset", "num_examples", "num_samples", "top_k", "num_classes", "dtype",
                "augment", "seed", "teacher_sha256", "params", "output_shape")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise errors.ConfigError(f"{mpath} lacks {missing}: {rebuild}")
    n, s, k, c = (manifest[key] for key in ("num_examples", "num_samples", "top_k",
                                              "num_classes"))
    if n < 1 or s < 1:
        raise errors.ConfigError(
            f"the teacher cache at {path} is empty ({n} examples x {s} samples): {rebuild} "
            f"with num_samples >= 1 on a non-empty split")
    if not 1 <= k <= c:
        raise errors.ConfigError(
            f"the teacher cache at {path} has top_k={k} for {c} classes; top_k must be in "
            f"[1, {c}]: {rebuild}")
    if manifest["dtype"] not in _DTYPES:
        raise errors.ConfigError(f"{mpath} has dtype={manifest['dtype']!r}, not one of "
                                 f"{_DTYPES}: {rebuild}")
    want, have = _dataset_record(source), manifest["dataset"]
    if have.get("num_examples") != want["num_examples"] or n != want["num_examples"]:
        raise errors.ConfigError(
            f"the teacher cache at {path} holds {n} examples of {have.get('name')}/"
            f"{have.get('split')} but the training source {want['name']}/{want['split']} has "
            f"{want['num_examples']}; {rebuild} for this split")
    for key in ("name", "split", "shape", "labels_sha256"):
        if key in have and key in want and have[key] != want[key]:
            raise errors.ConfigError(
                f"the teacher cache at {path} was built for dataset {key}={have[key]!r} but the "
                f"training source has {key}={want[key]!r}; {rebuild} for this data")
    if num_classes is not None and c != num_classes:
        raise errors.ConfigError(
            f"the teacher cache at {path} has {c} classes but the student needs {num_classes}; "
            f"{rebuild} with a teacher of the student's label set")
    if teacher_sha256 is not None and manifest["teacher_sha256"] != teacher_sha256:
        raise errors.ConfigError(
            f"the teacher cache at {path} was built from teacher sha256 "
            f"{manifest['teacher_sha256'][:16]}... but the teacher now is "
            f"{teacher_sha256[:16]}...; {rebuild} for this teacher")
    try:
        stored = data_lib.AugmentConfig(**manifest["augment"])
    except (TypeError, ValueError) as e:
        raise errors.ConfigError(f"{mpath} has an invalid augment block ({e}): {rebuild}") from None
    for key, asked, have in (("augment", augment, stored), ("num_samples", num_samples, s),
                             ("top_k", top_k, k)):
        if asked is not None and asked != have:
            raise errors.ConfigError(
                f"the teacher cache at {path} was built with {key}={have} but {key}={asked} is "
                f"asked for; {rebuild} with these settings (or use another cache directory)")
    try:
        manifest["params"] = {key: (tuple(t), d) for key, (t, d) in manifest["params"].items()}
        specs = _array_specs(manifest)
    except (TypeError, ValueError, AttributeError) as e:
        raise errors.ConfigError(f"{mpath} has an invalid params block ({e}): {rebuild}") from None
    arrays = {}
    for key, (shape, dtype) in specs.items():
        fname = os.path.join(path, key + ".npy")
        if not os.path.isfile(fname):
            raise errors.ConfigError(f"the teacher cache at {path} lacks {key}.npy: {rebuild}")
        try:
            arr = np.load(fname, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise errors.ConfigError(
                f"{fname} is truncated or unreadable ({e}): {rebuild}") from None
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
            raise errors.ConfigError(
                f"{fname} holds {arr.dtype} {tuple(arr.shape)} but the manifest implies {dtype} "
                f"{tuple(shape)} (num_examples x num_samples x ...): {rebuild}")
        arrays[key] = arr
    total = sum(int(a.nbytes) for a in arrays.values())
    if in_memory or (in_memory is None and total <= _IN_MEMORY_MAX_BYTES):
        arrays = {key: np.array(a) for key, a in arrays.items()}
    return Cache(path, manifest, arrays)


# -------------------------------------------------------------------------------- pipeline
class CachePipeline:
    """Training batches with replayed augmentations and cached teacher outputs.

    The interface of :class:`jaxkd.data.Pipeline` (iterator, ``batch_at``, ``get_state`` /
    ``set_state``, ``close``, ``output_shape``, ``element_spec``, ``steps_per_epoch``); see
    :func:`make_cache_pipeline`.
    """

    def __init__(self, cache: Cache, source, *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                 with_index: bool = False):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by "
                f"process_count={process_count}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs={num_epochs} must be None or >= 1")
        if len(source) != cache.num_examples:
            raise errors.ConfigError(
                f"the teacher cache at {cache.path} holds {cache.num_examples} examples but the "
                f"source has {len(source)}; load the cache with load_cache(path, source=source)")
        self.cache, self.source = cache, source
        self.seed = int(seed)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.num_examples = n = cache.num_examples
        self.num_epochs = num_epochs
        self.num_batches = None if num_epochs is None else num_epochs * n // global_batch_size
        self.with_index = bool(with_index)
        self.augment = cache.augment
        self._aug = _Augmenter(source, self.augment, cache.seed)
        self.output_shape = self._aug.output_shape
        if list(self.output_shape) != list(cache.manifest["output_shape"]):
            raise errors.ConfigError(
                f"the teacher cache at {cache.path} holds inputs of shape "
                f"{cache.manifest['output_shape']} but this source gives {self.output_shape}")
        self._params = list(cache.manifest["params"])
        self._offset = np.random.default_rng([self.seed, _SAMPLE]).integers(
            0, cache.num_samples, size=n)
        self._perms: dict[int, np.ndarray] = {}
        self._step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_batches is not None and self._step >= self.num_batches:
            raise StopIteration
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite (num_epochs=None) pipeline has no length")
        return self.num_batches

    @property
    def steps_per_epoch(self) -> float:
        return self.num_examples / self.global_batch_size

    @property
    def element_spec(self) -> dict[str, Any]:
        b, k = self.local_batch_size, self.cache.top_k
        spec = {
            "image": jax.ShapeDtypeStruct((b, *self.output_shape), np.float32),
            "label": jax.ShapeDtypeStruct((b,), np.int32),
            "mask": jax.ShapeDtypeStruct((b,), np.float32),
        }
        if self.augment.mixup_alpha > 0:
            spec["label2"] = jax.ShapeDtypeStruct((b,), np.int32)
            spec["lam"] = jax.ShapeDtypeStruct((b,), np.float32)
        if self.with_index:
            spec["index"] = jax.ShapeDtypeStruct((b,), np.int32)
        spec["teacher_topk_logits"] = jax.ShapeDtypeStruct((b, k), np.float32)
        spec["teacher_topk_index"] = jax.ShapeDtypeStruct((b, k), np.int32)
        spec["teacher_lse"] = jax.ShapeDtypeStruct((b,), np.float32)
        return spec

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, "seed": self.seed,
                "global_batch_size": self.global_batch_size,
                "num_examples": self.num_examples, "train": True,
                "cache_num_samples": self.cache.num_samples}

    def set_state(self, state: dict[str, Any]) -> None:
        mine = self.get_state()
        for key in ("seed", "global_batch_size", "num_examples", "train", "cache_num_samples"):
            if key in state and type(mine[key])(state[key]) != mine[key]:
                raise ValueError(
                    f"pipeline state has {key}={state[key]!r} but this pipeline has "
                    f"{key}={mine[key]!r}; restore into a pipeline built the same way")
        self._step = int(state["step"])

    def close(self, wait: bool = True) -> None:
        del wait  # Nothing runs in the background.

    def _order(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Example index and epoch at each stream position (the order of ``make_pipeline``)."""
        n = self.num_examples
        epochs, within = np.divmod(positions, n)
        out = np.empty_like(positions)
        perms = {}
        for e in np.unique(epochs):
            e = int(e)
            perms[e] = self._perms.get(e)
            if perms[e] is None:
                perms[e] = np.random.default_rng([self.seed, _SHUFFLE, e]).permutation(n)
            sel = epochs == e
            out[sel] = perms[e][within[sel]]
        self._perms = perms
        return out, epochs

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of global batch ``step`` (pure: does not move the iterator)."""
        g, b = self.global_batch_size, self.local_batch_size
        positions = step * g + self.process_index * b + np.arange(b, dtype=np.int64)
        ex, epochs = self._order(positions)
        j = (self._offset[ex] + epochs) % self.cache.num_samples
        arrays = self.cache.arrays
        params = {key: np.asarray(arrays[key][ex, j]) for key in self._params}
        out, _ = self._aug.render(ex, params)
        out["mask"] = np.ones(b, np.float32)
        if self.with_index:
            out["index"] = ex.astype(np.int32)
        lse = np.asarray(arrays["lse"][ex, j], np.float32)
        out["teacher_topk_logits"] = (np.asarray(arrays["topk_logprob"][ex, j], np.float32)
                                      + lse[:, None])
        out["teacher_topk_index"] = np.asarray(arrays["topk_index"][ex, j], np.int32)
        out["teacher_lse"] = lse
        return out


def make_cache_pipeline(cache: Cache, source, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        num_epochs: int | None = None, with_index: bool = False
                        ) -> CachePipeline:
    """Training pipeline over ``source`` that replays ``cache``'s augmentations and teacher.

    Example order is that of ``make_pipeline(source, ..., seed=seed, train=True)``; example
    ``i`` in epoch ``e`` replays stored sample ``(o_i + e) mod S`` (``o_i`` from
    ``default_rng([seed, 2])``). Rows are independent, so the slices of processes ``0..P-1``
    concatenate to the single-process batch, and ``{"step": s}`` restores it exactly.

    Returns:
      A :class:`CachePipeline` whose batches hold ``image`` float32 ``[G/P, *shape]``,
      ``label`` int32, ``mask`` float32 (all ones: batches never pad), ``label2`` / ``lam`` with
      mixup (the stored partner and ``lam``), ``teacher_topk_logits`` float32 ``[G/P, k]``,
      ``teacher_topk_index`` int32 ``[G/P, k]`` and ``teacher_lse`` float32 ``[G/P]``.
    """
    return CachePipeline(cache, source, global_batch_size=global_batch_size, seed=seed,
                         process_index=process_index, process_count=process_count,
                         num_epochs=num_epochs, with_index=with_index)


# ------------------------------------------------------------------------------ teacher
def topk_to_logits(topk_logits: jax.Array, topk_index: jax.Array, lse: jax.Array,
                   num_classes: int) -> jax.Array:
    """Full teacher log-probabilities ``[..., C]`` from its top-k logits.

    Args:
      topk_logits: ``[..., k]`` teacher logits of the top-k classes.
      topk_index: ``[..., k]`` their class ids (distinct per row).
      lse: ``[...]`` ``logsumexp`` of the teacher's full logits.
      num_classes: ``C >= k``.

    Returns:
      float32 ``[..., C]``: ``logit - lse`` (exact) at the top-k classes, and
      ``log((1 - sum p_topk) / (C - k))`` at each other class: the leftover mass spread evenly.
      The leftover is floored at 1e-30 (rounding can make it <= 0), so values and gradients stay
      finite. With ``k == C`` this is ``log_softmax(logits)``: every softmax-based KD loss
      (at any temperature) is then the live teacher's.
    """
    chex.assert_equal_shape([topk_logits, topk_index])
    chex.assert_equal_shape_prefix([topk_logits, lse], lse.ndim)
    k = topk_logits.shape[-1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"top-k size {k} must be in [1, num_classes={num_classes}]")
    batch = topk_logits.shape[:-1]
    logp = topk_logits.astype(jnp.float32) - lse.astype(jnp.float32)[..., None]
    if k == num_classes:
        fill = jnp.zeros(batch, jnp.float32)
    else:
        mass = jax.nn.logsumexp(logp, axis=-1)  # log sum p_topk, <= 0 up to rounding
        leftover = -jnp.expm1(jnp.minimum(mass, 0.0))
        fill = jnp.log(jnp.maximum(leftover, _TAIL_FLOOR)) - np.log(num_classes - k)
    m = int(np.prod(batch, dtype=np.int64))
    out = jnp.broadcast_to(fill.reshape(m, 1), (m, num_classes))
    out = out.at[jnp.arange(m)[:, None], topk_index.reshape(m, k).astype(jnp.int32)].set(
        logp.reshape(m, k), unique_indices=True)
    return out.reshape(*batch, num_classes)


def cached_teacher(num_classes: int) -> steps.Teacher:
    """A :class:`~jaxkd.kd.steps.Teacher` reading a :class:`CachePipeline` batch's teacher keys.

    Its "logits" are the teacher's log-probabilities (:func:`topk_to_logits`), which every
    softmax-based distillation loss treats exactly as the logits themselves.
    """

    def fn(variables, batch):
        del variables
        return topk_to_logits(batch["teacher_topk_logits"], batch["teacher_topk_index"],
                              batch["teacher_lse"], num_classes)

    return steps.Teacher(fn, {}, {})
