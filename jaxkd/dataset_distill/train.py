"""``train_and_evaluate(config, workdir)``: distil a data set, evaluate it, report baselines.

Sections: data -> baselines -> experts (trajectory methods) -> synthetic-set state -> the
distillation loop (``jaxkd.core.loop.fit``: auto-resume, SIGTERM save, progress bar, metrics)
-> outputs. Writes in ``workdir``:

- ``synthetic.npz``: ``images`` (the data set's layout and units, e.g. 0..16 for digits),
  ``labels`` (int ``[M]``, or soft ``[M, C]`` probabilities), ``lr`` (the learned inner
  learning rate, trajectory methods);
- ``synthetic.png``: the synthetic set next to real examples of each class;
- ``results.json``: ``eval/acc_mean``, ``eval/acc_std``, ``baseline/{random,class_mean,full}/
  acc_{mean,std}``, cross-architecture ``eval_<model>/acc_*``; fractions in [0, 1];
- ``metrics.jsonl``, TensorBoard events, ``distill_curves.png``, ``checkpoints/distill``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxkd import data as data_lib
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors, loop, metrics, report
from jaxkd.dataset_distill import evaluate as eval_lib
from jaxkd.dataset_distill import experts as experts_lib
from jaxkd.dataset_distill import fyi as fyi_lib
from jaxkd.dataset_distill import viz
from jaxkd.dataset_distill.augment import DSAConfig, parse_strategy
from jaxkd.dataset_distill.augment import dsa as dsa_fn
from jaxkd.dataset_distill.dc import DCConfig, GradientMatching
from jaxkd.dataset_distill.dm import DMConfig, DistributionMatching
from jaxkd.dataset_distill.frepo import FeatureRegression, FRePoConfig
from jaxkd.dataset_distill.mtt import MTTConfig, TrajectoryMatching, label_targets
from jaxkd.dataset_distill import sre2l as sre2l_lib
from jaxkd.dataset_distill import zca as zca_lib
from jaxkd.dataset_distill.nets import ExpertObjective, FlatModel, SGDConfig
from jaxkd.dataset_distill.unroll import METHODS as HYPERGRAD_METHODS
from jaxkd.models import registry

__all__ = ["METHODS", "RealData", "load_real", "train_and_evaluate"]

METHODS: tuple[str, ...] = ("mtt", "dm", "dc", "frepo", "sre2l")
SOFT_LABEL_METHODS = ("sre2l",)  # relabelled by a teacher: reported apart from hard labels
TRAJECTORY_METHODS = ("mtt",)
INITS: tuple[str, ...] = ("real", "noise", "class_mean")  # config.distill.init


@dataclasses.dataclass(frozen=True)
class RealData:
    """A labelled data set in memory, normalised per channel (``(x - mean) / std``), then
    ZCA-whitened when ``zca`` is set (fitted on the training split)."""

    name: str
    x: jax.Array
    y: np.ndarray
    x_test: jax.Array
    y_test: np.ndarray
    num_classes: int
    shape: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    zca: zca_lib.Zca | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        """Range of the normalised training inputs; synthetic inputs are kept inside it."""
        return float(jnp.min(self.x)), float(jnp.max(self.x))

    def to_stored(self, x: jax.Array) -> np.ndarray:
        """Normalised (and whitened) inputs back to the data set's own units."""
        x = np.asarray(x, np.float32)
        if self.zca is not None:
            x = self.zca.invert(x)
        return x * self.std + self.mean

    def from_stored(self, x: np.ndarray) -> jax.Array:
        """Inputs in the data set's own units to the normalised (and whitened) space."""
        x = (np.asarray(x, np.float32) - self.mean) / self.std
        return jnp.asarray(self.zca.apply(x) if self.zca is not None else x)


def load_real(name: str, data_dir: str | None = None, zca: float = 0.0) -> RealData:
    """The train and test splits of registry data set ``name``, normalised, in memory; with
    ``zca`` > 0 both are ZCA-whitened with that regulariser (fitted on the train split)."""
    spec = data_lib.DATASETS[name] if name in data_lib.DATASETS else None
    if spec is None:
        raise errors.ConfigError(f"config.data.name={name!r} is not a data set; valid: "
                                 f"{', '.join(sorted(data_lib.DATASETS))}")
    train = data_lib.load(name, "train", data_dir=data_dir, in_memory=True)
    test = data_lib.load(name, spec.eval_split, data_dir=data_dir, in_memory=True)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    (x, y), (xt, yt) = train.arrays(), test.arrays()
    norm = lambda a: (a.astype(np.float32) - mean) / std
    x, xt = norm(x), norm(xt)
    whiten = zca_lib.fit_zca(x, zca) if zca > 0 else None
    if whiten is not None:
        x, xt = whiten.apply(x), whiten.apply(xt)
    return RealData(name, jnp.asarray(x), np.asarray(y), jnp.asarray(xt), np.asarray(yt),
                    spec.num_classes, tuple(x.shape[1:]), mean, std, whiten)


# ------------------------------------------------------------------------------------ config
def _dsa(cfg: ml_collections.ConfigDict) -> DSAConfig:
    return DSAConfig(**cfg.to_dict())


def _sgd(cfg: ml_collections.ConfigDict) -> SGDConfig:
    return SGDConfig(**cfg.to_dict())


def _model(name: str, kwargs: dict, data: RealData, key: str) -> FlatModel:
    try:
        module = registry.build(name, num_classes=data.num_classes, **kwargs)
        return FlatModel.create(module, data.shape)
    except (TypeError, ValueError) as e:
        raise errors.ConfigError(f"{key}: {e}") from None


def check_config(config: ml_collections.ConfigDict, data: RealData | None = None) -> None:
    """Raises :class:`ConfigError` naming the key for a config that cannot work."""
    if config.method not in METHODS:
        raise errors.ConfigError(f"config.method={config.method!r}; valid: {', '.join(METHODS)}")
    if config.ipc < 1:
        raise errors.ConfigError(f"config.ipc={config.ipc} must be >= 1")
    expert_objective(config)  # raises on bad experts.{sam_*, loss_scale, grad_penalty}
    if config.distill.fyi and "flip" not in config.dsa.strategy.split("_"):
        raise errors.ConfigError(
            f"config.distill.fyi=True pairs each image with its mirror image, which helps only "
            f"where a flip keeps the label; config.dsa.strategy={config.dsa.strategy!r} has no "
            "'flip' (digits and MNIST-1D are never flipped). Add flip to config.dsa.strategy "
            "for flippable data, or turn FYI off")
    if not config.data.zca >= 0:
        raise errors.ConfigError(
            f"config.data.zca={config.data.zca} must be >= 0 (0 = off; the regulariser added to "
            "the covariance's eigenvalues, 0.1 in MTT's reference code)")
    if config.distill.iterations < 0:
        raise errors.ConfigError(f"config.distill.iterations={config.distill.iterations} must "
                                 "be >= 0 (0 = evaluate config.distill.init_file as it is)")
    if config.distill.init not in INITS:
        raise errors.ConfigError(f"config.distill.init={config.distill.init!r}; valid: "
                                 f"{', '.join(INITS)}")
    if config.distill.labels not in ("hard", "expert"):
        raise errors.ConfigError(
            f"config.distill.labels={config.distill.labels!r}; valid: hard, expert (soft labels "
            "initialised from an expert's logits, trajectory methods)")
    if config.method == "sre2l":
        s = config.sre2l
        if config.distill.labels != "hard":
            raise errors.ConfigError("config.distill.labels must be 'hard' for sre2l: its labels "
                                     "come from the teacher (relabel stage)")
        if s.relabel not in ("crop", "image"):
            raise errors.ConfigError(f"config.sre2l.relabel={s.relabel!r}; valid: crop (teacher "
                                     "labels per augmented batch), image (one per image)")
        if not 0.0 < s.crop_min_scale <= 1.0 or s.r_bn < 0 or s.temperature <= 0:
            raise errors.ConfigError(
                f"config.sre2l: crop_min_scale={s.crop_min_scale} must be in (0, 1], "
                f"r_bn={s.r_bn} >= 0 and temperature={s.temperature} > 0")
        if s.teacher.kwargs.get("norm") != "batch" and s.teacher.name in ("convnet",
                                                                            "convnet1d"):
            raise errors.ConfigError(
                f"config.sre2l.teacher.kwargs.norm={s.teacher.kwargs.get('norm')!r}: SRe2L "
                "matches BatchNorm statistics, so the teacher needs norm='batch'")
    if config.distill.labels == "expert" and config.method not in TRAJECTORY_METHODS:
        raise errors.ConfigError("config.distill.labels='expert' needs expert trajectories; "
                                 f"use a trajectory method ({', '.join(TRAJECTORY_METHODS)})")
    if config.distill.optimizer not in ("sgd", "adam"):
        raise errors.ConfigError(f"config.distill.optimizer={config.distill.optimizer!r}; "
                                 "valid: sgd (momentum config.distill.momentum), adam")
    if not 0.0 <= config.distill.ema < 1.0:
        raise errors.ConfigError(f"config.distill.ema={config.distill.ema} must be in [0, 1) "
                                 "(0 = off; FTD uses 0.999 over thousands of iterations)")
    if config.mtt.hypergrad not in HYPERGRAD_METHODS:
        raise errors.ConfigError(f"config.mtt.hypergrad={config.mtt.hypergrad!r}; valid: "
                                 f"{', '.join(HYPERGRAD_METHODS)}")
    for key in ("dsa", "eval.dsa", "experts.dsa"):
        node = config
        for part in key.split("."):
            node = node[part]
        try:
            parse_strategy(node.strategy)
        except ValueError as e:
            raise errors.ConfigError(f"config.{key}.strategy: {e}") from None
    if data is not None:
        if config.distill.fyi and data.x.ndim != 4:
            raise errors.ConfigError(
                f"config.distill.fyi=True flips images [N, H, W, C]; {data.name} examples have "
                f"shape {tuple(data.x.shape[1:])}")
        counts = np.bincount(data.y, minlength=data.num_classes)
        if config.ipc > counts.min():
            raise errors.ConfigError(
                f"config.ipc={config.ipc} is more than the {counts.min()} training examples of "
                f"class {int(counts.argmin())} in {data.name}; the largest possible ipc is "
                f"{counts.min()}")


# ------------------------------------------------------------------------------ synthetic set
def init_synthetic(config, data: RealData, model: FlatModel,
                   trajectories: experts_lib.Trajectories | None) -> dict:
    """``{"images": [C*ipc, ...], "labels": [C*ipc, C], "lr": []}``, class by class."""
    rng = np.random.default_rng([config.seed, 1])
    ipc, nc = config.ipc, data.num_classes
    y = data.y
    logits = None
    if config.distill.labels == "expert":
        # DATM: soft labels are an expert's logits, on real images that expert gets right.
        epoch = config.distill.label_epoch or trajectories.epochs
        theta = jnp.asarray(trajectories.params(0, epoch))
        logits = np.asarray(jax.jit(model.apply)(theta, data.x))
        correct = logits.argmax(-1) == y
        y = np.where(correct, y, -1)
    idx = eval_lib.random_subset(y, ipc, nc, rng)
    images = data.x[idx]
    if config.distill.init == "noise":
        images = jnp.asarray(rng.standard_normal(images.shape), jnp.float32)
    elif config.distill.init == "class_mean":  # the class-mean baseline's images (k-means)
        images = jnp.asarray(eval_lib.class_means(np.asarray(data.x), y, ipc, nc,
                                                  seed=config.seed))
    if logits is None:
        labels = eval_lib.one_hot(np.repeat(np.arange(nc), ipc), nc)
    elif config.distill.init == "class_mean":
        labels = jax.jit(model.apply)(theta, images)
    else:
        labels = jnp.asarray(logits[idx])
    return {"images": images, "labels": labels, "lr": jnp.float32(config.distill.lr_init)}


def load_synthetic(path: str, data: RealData, ipc: int, soft: bool) -> dict:
    """Reads a ``synthetic.npz`` (as this driver writes it) into the distillation variables.

    Raises:
      ConfigError: the file is missing, or an array has the wrong shape (names the array,
        both shapes and the fix).
    """
    if not os.path.exists(path):
        raise errors.ConfigError(f"config.distill.init_file={path!r} does not exist")
    nc, n = data.num_classes, data.num_classes * ipc
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for name in ("images", "labels"):
        if name not in arrays:
            raise errors.ConfigError(f"{path} has no array {name!r} (found: {sorted(arrays)})")
    images, labels = arrays["images"], arrays["labels"]
    if images.shape != (n, *data.shape):
        raise errors.ConfigError(
            f"{path}: 'images' has shape {images.shape}, but {data.name} at ipc={ipc} needs "
            f"{(n, *data.shape)} ({nc} classes x {ipc} images of shape {data.shape}); set "
            "config.ipc to the file's images per class or use a file made for this data set")
    if labels.shape not in ((n,), (n, nc)):
        raise errors.ConfigError(
            f"{path}: 'labels' has shape {labels.shape}; expected {(n,)} (class ids) or "
            f"{(n, nc)} (soft labels)")
    classes = labels if labels.ndim == 1 else labels.argmax(-1)
    counts = np.bincount(classes.astype(np.int64), minlength=nc)
    if len(counts) != nc or np.any(counts != ipc):
        raise errors.ConfigError(
            f"{path}: the labels give {counts.tolist()} images per class; config.ipc={ipc} "
            f"needs exactly {ipc} of each of the {nc} classes")
    order = np.argsort(classes, kind="stable")  # class by class, as the methods expect
    images, labels = images[order], labels[order]
    x = data.from_stored(images)
    if labels.ndim == 1:
        y = eval_lib.one_hot(labels.astype(np.int32), nc)
        y = jnp.log(jnp.clip(y, 1e-6, 1.0)) if soft else y
    else:
        y = jnp.log(jnp.clip(jnp.asarray(labels, jnp.float32), 1e-12, 1.0)) if soft else (
            jnp.asarray(labels, jnp.float32))
    lr = float(arrays["lr"]) if "lr" in arrays else None
    return {"images": x, "labels": y, "lr": lr}


def make_optimizer(config, soft: bool) -> optax.GradientTransformation:
    """The images' optimiser (``config.distill.optimizer``: SGD with momentum, or Adam), and SGD
    for the learning rate and (learnable soft) labels, from config.distill."""
    d = config.distill
    zero = optax.set_to_zero()
    images = (optax.adam(d.lr_img) if d.optimizer == "adam"
              else optax.sgd(d.lr_img, momentum=d.momentum or None))
    txs = {"images": images,
           "lr": optax.sgd(d.lr_lr, momentum=d.momentum or None) if d.lr_lr else zero,
           "labels": (optax.sgd(d.lr_label, momentum=d.label_momentum or None)
                      if soft and d.lr_label else zero)}
    return optax.multi_transform(txs, {"images": "images", "lr": "lr", "labels": "labels"})


def _write_synthetic(path: str, syn: dict, data: RealData, soft: bool, learns_lr: bool) -> None:
    arrays = {"images": data.to_stored(syn["images"])}
    if soft:
        arrays["labels"] = np.asarray(label_targets(syn["labels"], True), np.float32)
    else:
        arrays["labels"] = np.asarray(jnp.argmax(syn["labels"], -1), np.int32)
    if learns_lr:
        arrays["lr"] = np.float32(syn["lr"])
    report.write_npz_atomic(path, **arrays)


# ------------------------------------------------------------------------------------ baselines
def _digest(*arrays) -> str:
    """SHA-256 of the arrays' float32 bytes (what an evaluation was computed on)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes())
    return h.hexdigest()


def _data_key(config) -> dict:
    """What the data looked like, for cache keys: its name, and the ZCA regulariser when
    whitening is on (left out when off, so keys stored before ZCA existed stay valid)."""
    key = {"data": config.data.name}
    return {**key, "zca": float(config.data.zca)} if config.data.zca > 0 else key


def _cached(path: str, key: dict, compute) -> dict[str, list[float]]:
    """``compute()`` (name -> accuracies), or the copy stored at ``path`` under the same key."""
    key = json.loads(json.dumps(key))  # as stored: tuples in the config come back as lists
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return cached["acc"]
    out = {k: [float(a) for a in v] for k, v in compute().items()}
    report.write_json_atomic(path, {"key": key, "acc": out})
    return out


def baselines(config, data: RealData, model: FlatModel, ecfg: eval_lib.EvalConfig,
              workdir: str) -> dict[str, list[float]]:
    """Accuracies of the random-subset, class-mean and full-data baselines (cached on disk).

    ``baselines.json`` holds the ipc-dependent two; ``full_baseline.json`` the full-data one,
    which depends only on the data and the evaluation network, schedule and augmentation
    (``config.eval`` but its cross-architecture networks and ``learned_lr``): copy it into
    another run's workdir (another method or ipc, same evaluation settings) to skip
    recomputing it.
    """
    ipc, nc = config.ipc, data.num_classes

    def small():
        rng = np.random.default_rng([config.seed, 2])
        subsets = [eval_lib.random_subset(data.y, ipc, nc, rng) for _ in range(ecfg.num_nets)]
        labels = eval_lib.one_hot(np.repeat(np.arange(nc), ipc), nc)
        means = eval_lib.class_means(np.asarray(data.x), data.y, ipc, nc, seed=config.seed)
        return {"random": eval_lib.evaluate(
                    model, jnp.stack([data.x[s] for s in subsets]),
                    jnp.stack([labels] * ecfg.num_nets), data.x_test, data.y_test, ecfg,
                    per_net=True),
                "class_mean": eval_lib.evaluate(model, jnp.asarray(means), labels, data.x_test,
                                                data.y_test, ecfg)}

    def full():
        return {"full": eval_lib.evaluate(model, data.x, eval_lib.one_hot(data.y, nc),
                                          data.x_test, data.y_test, ecfg,
                                          epochs=config.eval.full_epochs)}

    # Keyed on what each baseline reads, so that evaluation-only settings (cross-architecture
    # networks, the learned lr of the synthetic set) leave the stored baselines valid.
    shared = {k: v for k, v in config.eval.to_dict().items() if k in _BASELINE_EVAL_KEYS}
    acc = _cached(os.path.join(workdir, "baselines.json"),
                  {"ipc": ipc, "seed": config.seed, **_data_key(config),
                   "eval": dict(shared, epochs=config.eval.epochs)}, small)
    if config.eval.full_epochs > 0:
        acc.update(_cached(os.path.join(workdir, "full_baseline.json"),
                           {**_data_key(config),
                            "eval": dict(shared, full_epochs=config.eval.full_epochs)}, full))
    return acc


# The ``config.eval`` keys both baselines depend on (besides ``epochs`` / ``full_epochs``).
_BASELINE_EVAL_KEYS = ("model", "num_nets", "seed", "sgd", "dsa")


# ------------------------------------------------------------------------------------ experts
def _experts(config, data: RealData, model: FlatModel, workdir: str,
             progress: bool) -> experts_lib.Trajectories:
    e = config.experts
    directory = os.path.abspath(e.dir) if e.dir else os.path.join(workdir, "experts")
    if not e.train:
        return experts_lib.Trajectories(directory)
    return experts_lib.train_experts(
        directory, model, data.x, data.y, data.x_test, data.y_test,
        num_classes=data.num_classes, num_experts=e.num_experts, epochs=e.epochs,
        sgd=_sgd(e.sgd), dsa_cfg=_dsa(e.dsa), seed=e.seed,
        description={**_data_key(config), "model": config.model.name,
                     "model_kwargs": config.model.kwargs.to_dict()},
        progress=progress, objective=expert_objective(config))


def expert_objective(config: ml_collections.ConfigDict) -> ExpertObjective:
    """The experts' training objective (FTD's SAM/GSAM, AST's smoothing) from ``config.experts``."""
    e = config.experts
    try:
        scale = tuple(float(v) for v in e.loss_scale.split(",") if v.strip())
    except ValueError:
        raise errors.ConfigError(
            f"config.experts.loss_scale={e.loss_scale!r}: comma-separated numbers, one loss "
            "multiplier per early epoch (AST: '0.5,0.5,0.55,0.55,0.6,0.65,0.7,0.75,0.8,0.85,"
            "0.9'), or '' for none") from None
    if any(v <= 0 for v in scale):
        raise errors.ConfigError(
            f"config.experts.loss_scale={e.loss_scale!r}: every multiplier must be positive")
    for key in ("sam_rho", "sam_alpha", "grad_penalty"):
        if e[key] < 0:
            raise errors.ConfigError(f"config.experts.{key}={e[key]} must be >= 0 (0 = off)")
    if e.sam_alpha and not e.sam_rho:
        raise errors.ConfigError(
            f"config.experts.sam_alpha={e.sam_alpha} is GSAM's weight and needs sharpness-aware "
            "training: set config.experts.sam_rho > 0 too (FTD: sam_rho=0.01, sam_alpha=0.3)")
    return ExpertObjective(sam_rho=float(e.sam_rho), sam_alpha=float(e.sam_alpha),
                           sam_adaptive=bool(e.sam_adaptive), loss_scale=scale,
                           grad_penalty=float(e.grad_penalty))


# Keys that do not change the synthetic set a run produces: a run may resume under other values.
# ``distill.iterations`` may change to extend a run (a growing DATM window is then spread over
# the new total from the resume point on).
_RESUMABLE_KEYS = ("eval", "distill.progress", "distill.log_every", "distill.checkpoint_every",
                   "distill.on_nonfinite", "distill.iterations", "data.data_dir", "experts.dir",
                   "experts.train", "sre2l.teacher.dir")


def method_label(config: ml_collections.ConfigDict) -> str:
    """The method as its config file names it, with enabled options, for titles and tables.

    The driver runs DSA as DC with augmentation and FTD / AST / TESLA as MTT with other experts
    or hypergradient; ``config.method`` alone would call them ``dc`` and ``mtt``.
    """
    name = config.method
    options = []
    if name == "dc" and config.dsa.strategy:
        name = "dsa"
    if name in TRAJECTORY_METHODS:
        e = config.experts
        if e.sam_rho > 0:
            name = "ftd"
        elif e.loss_scale or e.grad_penalty:
            name = "ast"
        if config.mtt.hypergrad == "tesla":
            options.append("TESLA gradient")
        if config.distill.labels == "expert":
            options.append("DATM soft labels")
    if config.distill.ema and name != "ftd":
        options.append("image EMA")
    if config.distill.fyi:
        options.append("FYI")
    if name == "sre2l":
        options.append(f"per-{config.sre2l.relabel} relabel")
    return " + ".join([name] + options)


def distill_settings(config: ml_collections.ConfigDict) -> dict:
    """The config minus :data:`_RESUMABLE_KEYS`: what a distillation checkpoint was made under.

    It is saved in each checkpoint's meta; resuming under different settings is refused with
    the differing keys named (a run resumed under, say, another ``lr_img`` would silently
    report a mixture of the two).
    """
    plain = report.to_json_compatible(config.to_dict())  # strict JSON, as the meta stores it
    return _strip_resumable(json.loads(json.dumps(plain, allow_nan=False)))


def _strip_resumable(settings: dict) -> dict:
    """``settings`` (a JSON copy, changed in place) without :data:`_RESUMABLE_KEYS`."""
    for key in _RESUMABLE_KEYS:
        *parents, leaf = key.split(".")
        node = settings
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return settings


def _settings_diff(found, expected, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ, with both values."""
    if not (isinstance(found, dict) and isinstance(expected, dict)):
        return [] if found == expected else [f"{prefix or 'settings'}: checkpoint has {found!r}, "
                                             f"config asks for {expected!r}"]
    out = []
    for k in sorted(set(found) | set(expected)):
        key = f"{prefix}.{k}" if prefix else k
        if k not in found or k not in expected:
            side = "checkpoint" if k in found else "config"
            out.append(f"{key}: only in the {side}")
        else:
            out.extend(_settings_diff(found[k], expected[k], key))
    return out


def _check_resume(checkpointer: ckpt_lib.Checkpointer, settings: dict, directory: str) -> None:
    """Refuses to resume a distillation checkpoint made under other settings (names the keys)."""
    latest = checkpointer.latest_step()
    if latest is None:
        return
    found = checkpointer.read_meta(latest).get("settings")
    # Keys made resumable since the checkpoint was written are ignored on its side too.
    diffs = (["the checkpoint records no settings (made by an older jaxkd)"] if found is None
             else _settings_diff(_strip_resumable(found), settings))
    # A key on one side only was added (or removed) by another jaxkd version: its default is
    # taken to be what the checkpoint ran under. Said, not refused.
    added = [d for d in diffs if ": only in the " in d]
    diffs = [d for d in diffs if d not in added]
    if added:
        print(f"note: resuming {directory} (step {latest}); settings keys from another jaxkd "
              f"version: {'; '.join(added)}", flush=True)
    if diffs:
        raise ckpt_lib.CheckpointMismatchError(
            f"{directory} holds a distillation checkpoint (step {latest}) made under other "
            f"settings: {'; '.join(diffs[:8])}{' ...' if len(diffs) > 8 else ''}. Resuming would "
            "mix two runs: use a fresh --workdir, restore those settings, or delete "
            f"{directory} to start over. (Evaluation, logging and data_dir settings may change.)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Distils ``config.data`` into ``config.ipc`` images per class; returns ``results.json``."""
    check_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "distill"),
                                         max_to_keep=2, async_save=False)
    settings = distill_settings(config)
    try:  # before config.json is overwritten
        _check_resume(checkpointer, settings, checkpointer.directory)
    except ckpt_lib.CheckpointMismatchError:
        checkpointer.close()
        raise
    report.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    progress = config.distill.progress
    t0 = time.time()

    # -- data and models
    data = load_real(config.data.name, config.data.data_dir or None, config.data.zca)
    check_config(config, data)
    model = _model(config.model.name, config.model.kwargs.to_dict(), data, "config.model")
    eval_model = _model(config.eval.model.name, config.eval.model.kwargs.to_dict(), data,
                        "config.eval.model")
    eval_models = {"": eval_model}
    eval_specs = {"": config.eval.model.to_dict()}  # what each evaluation network is
    if config.eval.model.to_dict() != config.model.to_dict():
        eval_models["distill_net"] = model
        eval_specs["distill_net"] = config.model.to_dict()
    for name in [m for m in config.eval.cross_models.split(",") if m]:
        kwargs = dict(config.eval.cross_kwargs.get(name, {}))
        eval_models[name] = _model(name, kwargs, data, "config.eval.cross_models")
        eval_specs[name] = {"name": name, "kwargs": kwargs}
    ecfg = eval_lib.EvalConfig(num_nets=config.eval.num_nets, epochs=config.eval.epochs,
                               sgd=_sgd(config.eval.sgd), dsa=_dsa(config.eval.dsa),
                               seed=config.eval.seed)

    # -- method (with FYI, built for the set and its mirror images: 2 * ipc per class)
    soft = config.distill.labels == "expert"
    method_ipc = config.ipc * (2 if config.distill.fyi else 1)
    trajectories = None
    if config.method in TRAJECTORY_METHODS:
        trajectories = _experts(config, data, model, workdir, progress)
        method = TrajectoryMatching(model, trajectories, MTTConfig(**config.mtt.to_dict()),
                                    _dsa(config.dsa), soft=soft, seed=config.seed)
    elif config.method == "dc":
        method = GradientMatching(model, data.x, data.y, data.num_classes, method_ipc,
                                  DCConfig(**config.dc.to_dict()), _dsa(config.dsa),
                                  seed=config.seed)
    elif config.method == "sre2l":
        teacher_cfg = config.sre2l.teacher
        teacher = registry.build(teacher_cfg.name, num_classes=data.num_classes,
                                 **teacher_cfg.kwargs.to_dict())
        teacher_dsa = _dsa(config.experts.dsa)
        variables, teacher_acc = sre2l_lib.train_teacher(
            os.path.abspath(teacher_cfg.dir) if teacher_cfg.dir else os.path.join(workdir,
                                                                                 "teacher"),
            teacher, data.x, data.y, data.x_test, data.y_test, num_classes=data.num_classes,
            epochs=teacher_cfg.epochs, lr=teacher_cfg.lr, batch_size=teacher_cfg.batch_size,
            seed=teacher_cfg.seed, augment=lambda xb, k: dsa_fn(xb, k, teacher_dsa),
            description={**_data_key(config), "model": teacher_cfg.name,
                         "model_kwargs": teacher_cfg.kwargs.to_dict()})
        print(f"sre2l teacher ({teacher_cfg.name}): test accuracy {100 * teacher_acc:.2f}%",
              flush=True)
        sre2l_cfg = {k: v for k, v in config.sre2l.to_dict().items() if k != "teacher"}
        method = sre2l_lib.StatisticsRecovery(teacher, variables, data.num_classes, method_ipc,
                                              sre2l_lib.SRe2LConfig(**sre2l_cfg),
                                              seed=config.seed)
    elif config.method == "frepo":
        method = FeatureRegression(model, data.x, data.y, data.num_classes, method_ipc,
                                   FRePoConfig(**config.frepo.to_dict()), seed=config.seed)
    else:
        method = DistributionMatching(model, data.x, data.y, data.num_classes, method_ipc,
                                      DMConfig(**config.dm.to_dict()), _dsa(config.dsa),
                                      seed=config.seed)
    if config.distill.fyi:
        method = fyi_lib.FlipPaired(method, config.ipc, data.num_classes)
    # A method with a carry (DC's network between image updates) keeps it in the state.
    carries = hasattr(method, "init_carry")
    syn0 = init_synthetic(config, data, model, trajectories)
    if config.distill.init_file:
        loaded = load_synthetic(config.distill.init_file, data, config.ipc, soft)
        syn0 = {**syn0, "images": loaded["images"], "labels": loaded["labels"]}
        if loaded["lr"] is not None:
            syn0["lr"] = jnp.float32(loaded["lr"])

    # -- state, update and loop
    tx = make_optimizer(config, soft)
    lo, hi = data.bounds
    total = config.distill.iterations
    ema_decay = float(config.distill.ema)

    def init_state():
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(config.seed),
                "nonfinite": loop.init_nonfinite(), "syn": syn0, "opt": tx.init(syn0),
                "ema_images": syn0["images"],
                "skipped": jnp.zeros((), jnp.int32),
                **({"carry": method.init_carry()} if carries else {})}

    @jax.jit
    def apply_update(state, grads, loss, skip):
        updates, opt = tx.update(grads, state["opt"], state["syn"])
        syn = optax.apply_updates(state["syn"], updates)
        syn["images"] = jnp.clip(syn["images"], lo, hi)
        # FTD: an exponential moving average of the images is what gets evaluated and saved.
        ema = ema_decay * state["ema_images"] + (1.0 - ema_decay) * syn["images"]
        new = {**state, "syn": syn, "opt": opt, "step": state["step"] + 1, "ema_images": ema}
        grad_norm = optax.global_norm(grads)
        kept = jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, state)
        kept["step"], kept["skipped"] = new["step"], state["skipped"] + skip.astype(jnp.int32)
        out = loop.nonfinite_guard(state, kept, loss, grad_norm)
        return out, {"loss": loss, "grad_norm": grad_norm, "lr": syn["lr"],
                     "skipped": skip.astype(jnp.float32)}

    def step_fn(state, batch):
        del batch
        iteration = int(state["step"])
        if carries:
            loss, grads, extra, carry = method.loss_and_grad(state["syn"], iteration, total,
                                                             state["carry"])
        else:
            loss, grads, extra = method.loss_and_grad(state["syn"], iteration, total)
        state, m = apply_update(state, grads, loss, method.skip(loss))
        if carries:
            state = {**state, "carry": carry}
        return state, {**m, **{k: jnp.float32(v) for k, v in extra.items()}}

    abstract = jax.eval_shape(init_state)
    meta = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
            "num_classes": data.num_classes,
            "distill": {"method": config.method, "ipc": config.ipc, "data": config.data.name,
                        "labels": config.distill.labels},
            "settings": settings}
    d = config.distill
    writer = metrics.MetricWriter(workdir)
    with writer, checkpointer:
        state, _ = loop.fit(
            name="distill", init_state=init_state, abstract_state=abstract, step_fn=step_fn,
            pipeline=loop.NoData(), to_global=lambda b: b, eval_fn=None,
            checkpointer=checkpointer, meta=meta, writer=writer,
            cfg=loop.LoopConfig(total_steps=total, log_every=d.log_every,
                                checkpoint_every=d.checkpoint_every,
                                on_nonfinite=d.on_nonfinite,
                                on_nonfinite_key="config.distill.on_nonfinite",
                                progress=progress))
    distill_s = time.time() - t0
    syn = jax.device_get(state["syn"])
    if ema_decay:
        syn["images"] = jax.device_get(state["ema_images"])
    if config.method in SOFT_LABEL_METHODS:  # SRe2L's relabel stage: the teacher's soft labels
        syn["labels"] = jax.device_get(method.relabel(jnp.asarray(syn["images"])))
        soft = True

    # -- outputs
    label = method_label(config)
    _write_synthetic(os.path.join(workdir, "synthetic.npz"), syn, data, soft,
                     config.method in TRAJECTORY_METHODS)
    viz.synthetic_grid(os.path.join(workdir, "synthetic.png"), data.to_stored(syn["images"]),
                       np.repeat(np.arange(data.num_classes), config.ipc),
                       data.to_stored(data.x), data.y, title=f"{label}, ipc {config.ipc}")
    path = os.path.join(workdir, "metrics.jsonl")
    records = [r for r in (metrics.read_metrics(path) if os.path.exists(path) else [])
               if "distill/train/loss" in r]
    if records:
        report.plot_curves(os.path.join(workdir, "distill_curves.png"),
                           {"loss": metrics.series(records, "distill/train/loss")},
                           title=f"{label} on {data.name}, ipc {config.ipc}",
                           ylabel="distillation loss")

    lr = float(syn["lr"]) if (config.method in TRAJECTORY_METHODS
                              and config.eval.learned_lr) else None
    targets = label_targets(syn["labels"], soft)
    # SRe2L's per-crop relabelling: the teacher labels each augmented batch at evaluation.
    relabel = method.crop_labeller() if config.method == "sre2l" else None
    results: dict[str, float] = {}
    rows = []
    # Each network's evaluation is stored as it finishes (eval_<name>.json, keyed on the
    # synthetic set's bytes and the evaluation settings), so an interrupted run's evaluation
    # resumes at the next network instead of starting over.
    eval_key = {"synthetic": _digest(syn["images"], targets), "lr": lr, **_data_key(config),
                "eval": {k: v for k, v in config.eval.to_dict().items()
                         if k in _BASELINE_EVAL_KEYS and k != "model"},
                "epochs": config.eval.epochs,
                "relabel": config.sre2l.to_dict() if relabel is not None else None}
    for name, m in eval_models.items():
        accs = _cached(
            os.path.join(workdir, f"eval_{name or 'protocol'}.json"),
            dict(eval_key, model=eval_specs[name]),
            lambda m=m: {"acc": eval_lib.evaluate(m, jnp.asarray(syn["images"]), targets,
                                                  data.x_test, data.y_test, ecfg, lr=lr,
                                                  relabel=relabel)})["acc"]
        prefix = f"eval_{name}" if name else "eval"
        results[f"{prefix}/acc_mean"], results[f"{prefix}/acc_std"] = report.mean_std(accs)
        rows.append({"set": f"{label} synthetic ({name or config.eval.model.name})",
                     "acc (%)": report.fmt_mean_std(accs)})
    done = baselines(config, data, eval_model, ecfg, workdir) if config.eval.baselines else {}
    for name, accs in done.items():
        results[f"baseline/{name}/acc_mean"], results[f"baseline/{name}/acc_std"] = (
            report.mean_std(accs))
        rows.append({"set": f"baseline: {name}", "acc (%)": report.fmt_mean_std(accs)})
    results["distill/final_loss"] = float(records[-1]["distill/train/loss"]) if records else math.nan
    results["distill/skipped"] = float(state["skipped"])
    results["wall_time_s"] = time.time() - t0
    results["distill/wall_time_s"] = distill_s
    if trajectories is not None:
        results["experts/disk_mb"] = trajectories.disk_bytes() / 2**20
        results["experts/final_acc_mean"] = float(np.mean(trajectories.accuracy[-1]))
    if config.method in TRAJECTORY_METHODS:
        results["distill/lr"] = float(syn["lr"])
    if config.method == "sre2l":
        results["teacher/acc"] = teacher_acc
        results["relabel_per_crop"] = float(relabel is not None)
    # Soft-label sets (learned or teacher labels) are reported apart from hard-label ones.
    results["soft_labels"] = float(soft)
    report.write_results(os.path.join(workdir, "results.json"), results)
    title = (f"{label} on {data.name}, ipc {config.ipc} ({ecfg.num_nets} fresh nets, "
             "last-epoch test accuracy)")
    print(report.format_table(rows, title=title), flush=True)
    return results
