"""Few-class distillation: LELP (Loo, Iliopoulos, Hu, Vee 2024) against Hinton KD and scratch.

``train_and_evaluate(config, workdir)`` (``config.experiment = "lelp"``):

1. validate the config (names, sizes; the subspace must fit the teacher's embedding);
2. data: a ``K``-class data set relabelled to ``C`` (= 2) classes (``config.few_class.relabel``),
   train and test, as in-memory :class:`~jaxkd.data.ArraySource`\\ s;
3. teacher on the ``C`` labels (``jaxkd.kd.train.train_run``; or ``config.teacher.init``);
4. the pseudo-subclass table, once: the teacher's embeddings of the training set, a subspace and
   split per class, soft targets over ``C * S`` pseudo-subclasses, written atomically to
   ``workdir/lelp/`` and reused on a rerun;
5. per seed, the same student architecture, steps and data order: ``scratch`` (CE),
   ``kd`` (Hinton KD on the ``C`` logits, ``train_run``), ``lelp`` (head over ``C * S``
   pseudo-subclasses, KL to the table's targets), and ``oracle`` (head over the true fine
   labels, CE; an upper bound on what subclass information can give);
6. results table, ``results.json``, accuracy curves and a PNG of the pseudo-subclasses.

What LELP is here (the method card: "find informative linear subspaces of teacher embeddings,
split into pseudo-subclasses, student learns the pseudo-classes"), step by step:

* **Embeddings.** ``h(x)`` = the teacher's sown ``config.lelp.layer`` (``features``, the input
  of its classifier) on the un-augmented training images, eval mode; logits ``z(x)`` likewise.
* **Subspace per class** (:func:`fit_splits`). Optionally (``null_space``) the embeddings are
  first projected onto the null space of the teacher's classifier kernel ``W [D, C]``
  (``P = I - U U^T``, ``U`` the left singular vectors of ``W``): directions that move the logits
  are already in the soft labels. Then PCA of the (projected) embeddings of the *training
  examples labelled* ``c``: mean ``mu_c`` and the top ``m`` right singular vectors ``V_c [D, m]``
  (sign fixed so each vector's largest entry is positive). Coordinates
  ``y_c(x) = (P h(x) - mu_c) V_c``, divided by ``sigma_c`` = their RMS over class ``c``.
* **Split into ``S`` pseudo-subclasses** (:func:`split_logits`), for every example and *every*
  class ``c`` (also the classes it does not belong to):

  - ``rotation`` (``S == m``): ``y_c`` is turned by a fixed random orthonormal ``Q_c [m, m]``
    (Haar, seeded) so that the ``m`` coordinates have about equal variance, and coordinate ``j``
    is pseudo-subclass ``j``'s logit: ``l_cj = (y_c Q_c)_j / beta``;
  - ``kmeans``: deterministic k-means (k-means++ seeding, Lloyd) of the class's ``y_c`` into
    ``S`` centroids ``k_cj``; ``l_cj = -||y_c - k_cj||^2 / beta``.
* **Targets** (:func:`jaxkd.losses.few_class.pseudo_subclass_log_targets`):
  ``p(c, j | x) = softmax(z / T)_c * softmax_j(l_c)``: the teacher's softened class
  probabilities, each split by its class's pseudo-subclass distribution; summed over ``j`` they
  give back exactly the teacher's class probabilities.
* **Student**: the same architecture with ``C * S`` outputs (class-major), loss
  ``(1 - alpha) * CE(y, aggregated) + alpha * T^2 KL(p || softmax(s / T))`` with the
  ``config.kd`` ``alpha`` and ``T`` of the Hinton row; prediction ``argmax_c sum_j
  softmax(s)_{cj}`` (:func:`jaxkd.losses.few_class.aggregate_log_probs`).

How this differs from the paper (whose full text was not available here; the design above was
reconstructed from its abstract and a public review): the factorised targets (class
probability times within-class split) are this implementation's choice; the paper's exact
combination of class logits and projections, its temperature ``beta`` normalisation and its
default ``m`` may differ. The paper trains with ``alpha = 0`` in its convention (no label
loss, i.e. ``alpha = 1`` here); this experiment uses the Hinton row's ``alpha`` so the two rows
differ only in the distillation term. PCA groups examples by their *true* label. ``kmeans`` is an
alternative the paper compares against (as a clustering baseline), not LELP itself. Targets are
computed once on un-augmented images (a cached teacher), so augmentation is not matched.

The LELP and oracle students do not go through ``train.train_run``: it builds models with
``ctx.num_classes`` outputs, trains with CE on them plus a registered logit loss, and evaluates
the argmax of the raw outputs. :func:`train_subclass_run` is the same run (same pipeline seed,
optimizer, checkpointing and ``loop.fit``) with a ``C * S`` head, per-example targets looked up
by ``batch["index"]``, and evaluation of the aggregated classifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxkd import data as data_lib
from jaxkd import models
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import config_args, errors, loop, optim, report, sharding
from jaxkd.core import state as state_lib
from jaxkd.core.metrics import MetricWriter
from jaxkd.kd import features as features_lib
from jaxkd.kd import steps as steps_lib
from jaxkd.kd import train
from jaxkd.losses import few_class as fc_losses

# Private helpers of the standard KD driver, reused rather than copied.
# pylint: disable=protected-access
_curves, _meta, _pipeline = train._curves, train._meta, train._pipeline
_model_vars = steps_lib._model_vars
# pylint: enable=protected-access

# Fine label y of a K-class data set -> coarse label. Each coarse class is a union of fine
# classes (for digits: five visually distinct digits each).
RELABELINGS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "parity": lambda y, k: y % 2,  # even / odd (the paper's binarised CIFAR rule, y % 2)
    "halves": lambda y, k: (y >= k // 2).astype(y.dtype),  # digits 0-4 / 5-9
}
SPLITS = ("rotation", "kmeans")
KINDS = ("scratch", "kd", "lelp", "oracle")
TABLE_DIR = "lelp"


# ------------------------------------------------------------------------------------- data
def relabel_source(src: data_lib.ArraySource, rule: str) -> data_lib.ArraySource:
    """``src`` with labels mapped by ``RELABELINGS[rule]``; ``info.num_classes`` updated."""
    if rule not in RELABELINGS:
        raise errors.ConfigError(
            f"config.few_class.relabel={rule!r} is not one of {sorted(RELABELINGS)}")
    images, fine = src.arrays()
    coarse = np.asarray(RELABELINGS[rule](fine.astype(np.int32), src.info.num_classes), np.int32)
    num_classes = int(RELABELINGS[rule](np.arange(src.info.num_classes), src.info.num_classes)
                      .max()) + 1
    info = dataclasses.replace(src.info, name=f"{src.info.name}_{rule}", num_classes=num_classes)
    return data_lib.ArraySource(images, coarse, info)


def fine_slots(fine: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, int]:
    """Each example's slot ``c * S + j`` when class ``c``'s fine labels (sorted) are its subclasses.

    Returns ``(slots [N], S)`` with ``S`` the largest number of fine labels in one class.
    """
    groups = {int(c): sorted({int(f) for f in fine[coarse == c]}) for c in np.unique(coarse)}
    s = max(len(g) for g in groups.values())
    slots = np.asarray([int(c) * s + groups[int(c)].index(int(f)) for f, c in zip(fine, coarse)],
                       np.int32)
    return slots, s


# -------------------------------------------------------------------- pseudo-subclasses (NumPy)
def null_space_projector(kernel: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """``P [D, D]``: orthogonal projector onto the directions the classifier ``h @ W`` ignores."""
    u, sv, _ = np.linalg.svd(np.asarray(kernel, np.float64), full_matrices=False)
    u = u[:, sv > rtol * sv.max()]
    return np.eye(kernel.shape[0]) - u @ u.T


def principal_directions(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of ``x [n, D]``: ``(mean [D], directions [D, dim], variances [dim])``.

    Directions are orthonormal, by decreasing variance, each signed so its largest-magnitude
    entry is positive (a deterministic choice of the SVD's sign).
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[:dim].T
    v = v * np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    return mean, v, sv[:dim] ** 2 / max(len(x) - 1, 1)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A Haar-random orthonormal ``[dim, dim]`` matrix from ``np.random.default_rng(seed)``."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 100) -> np.ndarray:
    """Deterministic k-means of ``x [n, d]``: k-means++ seeding, then Lloyd; ``[k, d]`` centroids.

    An empty cluster is re-seeded at the point farthest from its centroid.
    """
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.asarray(centroids)[None]) ** 2).sum(-1), axis=1)
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0
                         else x[rng.integers(len(x))])
    c = np.asarray(centroids)
    for _ in range(iters):
        d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
        assign = d2.argmin(1)
        new = c.copy()
        for j in range(k):
            members = x[assign == j]
            new[j] = members.mean(0) if len(members) else x[d2.min(1).argmax()]
        if np.allclose(new, c):
            break
        c = new
    return c


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """Class ``c``'s subspace and split: ``y = (h P - mean) @ directions / scale``, then the
    logits are ``(y @ rotation) / beta`` (rotation) or ``-|y - centroids_j|^2 / beta`` (kmeans)."""

    mean: np.ndarray  # [D]
    directions: np.ndarray  # [D, m]
    variances: np.ndarray  # [m], of the unscaled coordinates
    scale: float
    rotation: np.ndarray | None = None  # [m, m]
    centroids: np.ndarray | None = None  # [S, m]


def fit_splits(emb: np.ndarray, labels: np.ndarray, num_classes: int, *, projector: np.ndarray
               | None, dim: int, subclasses: int, split: str, seed: int = 0,
               kmeans_iters: int = 100) -> list[ClassSplit]:
    """One :class:`ClassSplit` per class, fitted on the examples labelled with that class."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if split == "rotation" and subclasses != dim:
        raise ValueError(f"split='rotation' needs subclasses == dim, got {subclasses} and {dim}")
    x = np.asarray(emb, np.float64)
    if projector is not None:
        x = x @ projector
    out = []
    for c in range(num_classes):
        xc = x[labels == c]
        if len(xc) <= max(dim, subclasses):
            raise ValueError(f"class {c} has {len(xc)} examples; a {dim}-dimensional subspace "
                             f"split into {subclasses} needs more")
        mean, v, var = principal_directions(xc, dim)
        scale = float(np.sqrt(np.mean(var))) or 1.0
        if split == "rotation":
            out.append(ClassSplit(mean, v, var, scale, rotation=random_rotation(dim, seed + c)))
        else:
            y = (xc - mean) @ v / scale
            out.append(ClassSplit(mean, v, var, scale,
                                  centroids=kmeans(y, subclasses, seed=seed + c,
                                                   iters=kmeans_iters)))
    return out


def subspace_coords(emb: np.ndarray, split: ClassSplit, projector: np.ndarray | None) -> np.ndarray:
    """``[N, m]`` scaled coordinates of every example in one class's subspace."""
    x = np.asarray(emb, np.float64)
    if projector is not None:
        x = x @ projector
    return (x - split.mean) @ split.directions / split.scale


def split_logits(emb: np.ndarray, splits: list[ClassSplit], *, projector: np.ndarray | None,
                 beta: float) -> np.ndarray:
    """Within-class pseudo-subclass logits ``[N, C, S]`` of every example for every class."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rows = []
    for s in splits:
        y = subspace_coords(emb, s, projector)
        if s.rotation is not None:
            rows.append(y @ s.rotation / beta)
        else:
            rows.append(-((y[:, None] - s.centroids[None]) ** 2).sum(-1) / beta)
    return np.stack(rows, axis=1).astype(np.float32)


def purity(assign: np.ndarray, fine: np.ndarray) -> float:
    """Fraction of examples whose fine label is the most common one of their pseudo-subclass."""
    total = 0
    for a in np.unique(assign):
        total += np.bincount(fine[assign == a]).max()
    return float(total / len(assign))


# --------------------------------------------------------------------------------- validation
def validate_config(config: ml_collections.ConfigDict) -> None:
    """The KD schema's checks (``train.validate_config``) plus the few-class ones."""
    train.validate_config(config)
    try:
        _validate(config)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    config_args.check_choice("config.few_class.relabel", config.few_class.relabel, RELABELINGS)
    l = config.lelp
    config_args.check_choice("config.lelp.split", l.split, SPLITS)
    if l.subclasses < 2:
        raise ValueError(f"config.lelp.subclasses={l.subclasses} must be >= 2 (one pseudo-"
                         f"subclass per class is plain KD)")
    if l.subspace_dim < 1:
        raise ValueError(f"config.lelp.subspace_dim={l.subspace_dim} must be >= 1")
    if l.split == "rotation" and l.subclasses != l.subspace_dim:
        raise ValueError(
            f"config.lelp.split='rotation' makes one pseudo-subclass per rotated principal "
            f"direction: set config.lelp.subclasses == config.lelp.subspace_dim (got "
            f"{l.subclasses} and {l.subspace_dim}), or use split='kmeans'")
    if l.beta <= 0:
        raise ValueError(f"config.lelp.beta={l.beta} must be > 0")
    if l.kmeans_iters < 1:
        raise ValueError(f"config.lelp.kmeans_iters={l.kmeans_iters} must be >= 1")
    if config.data.augment.mixup_alpha > 0:
        raise ValueError("config.data.augment.mixup_alpha must be 0: the pseudo-subclass targets "
                         "are per example and are not mixed")
    if not l.layer:
        raise ValueError("config.lelp.layer must name a layer the teacher sows (e.g. 'features')")
    # One live teacher: its embeddings define the pseudo-subclasses.
    if (config.kd.source != "teacher" or config.teacher.num_teachers != 1
            or "," in config.teacher.init or config.teacher.cache.num_samples):
        raise ValueError(
            "config.experiment='lelp' needs one live teacher: config.kd.source='teacher', "
            "config.teacher.num_teachers=1, a single config.teacher.init and "
            "config.teacher.cache.num_samples=0")
    if config.kd.feature.loss:
        raise ValueError("config.kd.feature.loss must be '' here: the KD row is logit "
                         "distillation, the LELP row uses the teacher's embedding itself")


def check_embedding(config, shapes: dict[str, tuple[int, ...]], num_classes: int) -> int:
    """The teacher's embedding size; ConfigError if the layer is missing or the subspace too big."""
    l = config.lelp
    if l.layer not in shapes:
        raise errors.ConfigError(
            f"config.lelp.layer={l.layer!r}: the teacher sows no such layer; available: "
            + ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())))
    d = int(np.prod(shapes[l.layer]))
    room = d - num_classes if l.null_space else d
    if l.subspace_dim > room:
        raise errors.ConfigError(
            f"config.lelp.subspace_dim={l.subspace_dim} exceeds the {room} dimensions available "
            f"in the teacher's {l.layer!r} embedding (size {d}"
            + (f", minus {num_classes} for the classifier's span with null_space=True)"
               if l.null_space else ")"))
    return d


# ------------------------------------------------------------------------------ teacher pass
def teacher_outputs(ctx: train.Context, teacher: steps_lib.Teacher, src, layer: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C], embeddings [N, D])`` of the teacher on ``src``, index order, eval mode."""

    def fn(variables, batch):
        logits, inter = teacher.logits_and_intermediates(variables, batch)
        feat = inter[layer][0]
        return logits, feat.reshape(feat.shape[0], -1).astype(jnp.float32)

    jitted = jax.jit(fn, in_shardings=(teacher.shardings, sharding.batch_sharding(ctx.mesh)),
                     out_shardings=sharding.replicated(ctx.mesh))
    logits, feats = [], []
    # An evaluation pipeline visits the examples in index order; padding rows are masked out.
    for b in _pipeline(ctx, src, seed=0, train=False):
        z, h = jax.device_get(jitted(teacher.variables, sharding.to_global_batch(b, ctx.mesh)))
        keep = np.asarray(b["mask"]) > 0
        if jax.process_count() == 1:  # the replicated output is the global batch
            logits.append(z[keep])
            feats.append(h[keep])
        else:
            logits.append(z)
            feats.append(h)
    logits, feats = np.concatenate(logits), np.concatenate(feats)
    if jax.process_count() > 1:  # global rows are valid for the first N stream positions
        logits, feats = logits[:len(src)], feats[:len(src)]
    if len(logits) != len(src):
        raise AssertionError(f"teacher pass gave {len(logits)} rows for {len(src)} examples")
    return logits, feats


# ------------------------------------------------------------------------- pseudo-label table
def _table_key(config, teacher_sha: str) -> dict:
    return {"teacher_sha256": teacher_sha, "relabel": config.few_class.relabel,
            "temperature": float(config.kd.temperature), "lelp": config.lelp.to_dict()}


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def pseudo_subclass_table(ctx: train.Context, teacher: steps_lib.Teacher, teacher_sha: str,
                          fine_labels: np.ndarray) -> dict[str, Any]:
    """Builds (or reads back) ``workdir/lelp/table.npz`` and ``table.json``.

    The npz holds ``log_targets [N, C * S]`` (LELP), ``oracle_log_targets [N, C * S_fine]``
    (one-hot on the true fine label), the teacher's ``logits`` and each class's 2-D coordinates
    for the plot; the json the key it was built for (teacher hash and config), its ``sha256``
    and diagnostics. A table whose key differs from this run's is rebuilt.
    """
    config, l = ctx.config, ctx.config.lelp
    directory = os.path.join(ctx.workdir, TABLE_DIR)
    npz_path, json_path = os.path.join(directory, "table.npz"), os.path.join(directory,
                                                                             "table.json")
    key = report.to_json_compatible(_table_key(config, teacher_sha))
    if os.path.exists(json_path) and os.path.exists(npz_path):
        with open(json_path) as f:
            info = json.load(f)
        if info["key"] != key:
            diffs = {k: (info["key"].get(k), v) for k, v in key.items()
                     if info["key"].get(k) != v}
            raise ckpt_lib.CheckpointMismatchError(
                f"{json_path} holds pseudo-subclass targets built for another teacher or config "
                f"(table vs. this config: {diffs}), and the LELP students in this workdir were "
                f"trained on them. Use a fresh --workdir, or delete {directory} and "
                f"{os.path.join(ctx.workdir, 'checkpoints', 'lelp_seed*')} to redo them.")
        with np.load(npz_path) as f:
            arrays = {k: f[k] for k in f.files}
        if _sha(arrays["log_targets"]) == info["sha256"]:
            return {**arrays, "info": info, "path": npz_path}
        # Otherwise the npz is not the one the json describes: rebuilt below.

    c = ctx.num_classes
    labels = ctx.train_src.arrays()[1]
    logits, emb = teacher_outputs(ctx, teacher, ctx.train_src, l.layer)
    projector = None
    if l.null_space:
        head = teacher.variables["params"].get("head", {})
        if "kernel" not in head:
            raise errors.ConfigError(
                "config.lelp.null_space=True needs the teacher's classifier as params['head']"
                "['kernel'] (as every jaxkd model names it); set config.lelp.null_space=False")
        kernel = np.asarray(jax.device_get(head["kernel"]))
        projector = null_space_projector(kernel)
    splits = fit_splits(emb, labels, c, projector=projector, dim=l.subspace_dim,
                        subclasses=l.subclasses, split=l.split, seed=l.seed,
                        kmeans_iters=l.kmeans_iters)
    sub = split_logits(emb, splits, projector=projector, beta=l.beta)
    log_targets = np.asarray(fc_losses.pseudo_subclass_log_targets(
        jnp.asarray(logits), jnp.asarray(sub), temperature=config.kd.temperature), np.float32)
    slots, s_fine = fine_slots(fine_labels, labels)
    oracle = np.full((len(labels), c * s_fine), -np.inf, np.float32)
    oracle[np.arange(len(labels)), slots] = 0.0

    # Diagnostics: hard pseudo-subclass of each example within its own class.
    own = sub[np.arange(len(labels)), labels]  # [N, S]
    assign = labels * l.subclasses + own.argmax(-1)
    within = np.exp(own - own.max(-1, keepdims=True))
    within /= within.sum(-1, keepdims=True)
    entropy = float(np.mean(-(within * np.log(np.maximum(within, 1e-30))).sum(-1)))
    coords = np.zeros((len(labels), 2), np.float32)
    for k, split in enumerate(splits):
        y = subspace_coords(emb[labels == k], split, projector)
        coords[labels == k, :min(2, y.shape[1])] = y[:, :2]
    chance = purity(labels, fine_labels)  # one pseudo-subclass per class
    info = {
        "key": key, "sha256": _sha(log_targets), "num_examples": len(labels),
        "num_classes": c, "subclasses": l.subclasses, "fine_subclasses": s_fine,
        "embedding_dim": int(emb.shape[1]),
        "purity": purity(assign, fine_labels), "purity_one_subclass": chance,
        "within_class_entropy_nats": entropy,
        "subclass_sizes": np.bincount(assign, minlength=c * l.subclasses).tolist(),
        "explained_variance": [s.variances.tolist() for s in splits],
    }
    if jax.process_index() == 0:
        report.write_npz_atomic(npz_path, log_targets=log_targets, oracle_log_targets=oracle,
                                logits=logits, coords=coords, assign=assign)
        report.write_json_atomic(json_path, info)  # written last: it validates the npz
    return {"log_targets": log_targets, "oracle_log_targets": oracle, "logits": logits,
            "coords": coords, "assign": assign, "info": info, "path": npz_path}


# --------------------------------------------------------------------------- subclass student
def make_subclass_train_step(model, tx: optax.GradientTransformation, *, mesh, state_shardings,
                             num_classes: int, temperature: float, alpha: float,
                             ema_decay: float = 0.0):
    """``step(state, batch) -> (state, metrics)`` for a ``C * S``-output student.

    ``batch`` holds ``image``, ``label [B]`` (class), ``mask`` and ``target [B, C * S]`` (log
    pseudo-subclass targets); the loss is :func:`jaxkd.losses.few_class.lelp_objective`.
    """

    def step(state, batch):
        def loss_fn(params):
            logits, updates = model.apply(
                _model_vars(params, state["batch_stats"]), batch["image"], train=True,
                mutable=["batch_stats"])
            loss, aux = fc_losses.lelp_objective(
                logits, batch["target"], batch["label"], num_classes=num_classes,
                temperature=temperature, alpha=alpha, mask=batch["mask"])
            return loss, (logits, updates.get("batch_stats", {}), aux)

        (loss, (logits, new_bs, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=new_bs,
                         opt_state=opt_state, rng=jax.random.split(state["rng"])[0])
        if ema_decay:
            new_state["ema_params"] = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema_params"], params)
        grad_norm = optax.global_norm(grads)
        new_state = loop.nonfinite_guard(state, new_state, loss, grad_norm,
                                         optax.global_norm(updates))
        mask = batch["mask"]
        denom = jnp.maximum(jnp.sum(mask), 1.0)
        pred = jnp.argmax(fc_losses.aggregate_log_probs(logits, num_classes), -1)
        t_class = jnp.argmax(fc_losses.aggregate_log_probs(batch["target"], num_classes), -1)
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
                   "acc": jnp.sum((pred == batch["label"]) * mask) / denom,
                   "agreement": jnp.sum((pred == t_class) * mask) / denom}
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


def aggregated_logits_fn(model, num_classes: int, *, use_ema: bool = False):
    """``(state, batch) -> [B, C]`` aggregated class log-probabilities of a ``C * S`` student."""
    logits_fn = steps_lib.student_logits_fn(model, use_ema=use_ema)
    return lambda state, batch: fc_losses.aggregate_log_probs(logits_fn(state, batch),
                                                              num_classes)


def train_subclass_run(ctx: train.Context, spec: train.RunSpec, log_targets: np.ndarray, *,
                       temperature: float, alpha: float) -> tuple[dict, dict[str, float]]:
    """``train.train_run`` for a student with a ``log_targets.shape[1]``-way pseudo-subclass head.

    Same optimizer, pipeline seed, checkpointing, resume and evaluation pass as ``train_run``;
    the pipeline also gives each row's example index, which looks up its target row on the host.
    ``spec.teacher_record`` should name the table (its hash is checked on resume).
    """
    config = ctx.config
    num_outputs = int(log_targets.shape[1])
    model = models.build(spec.model, num_classes=num_outputs, **spec.model_kwargs)
    steps_per_epoch = max(1, len(ctx.train_src) // config.train.batch_size)
    total = optim.resolve_steps(spec.steps_cfg.steps, spec.steps_cfg.epochs, steps_per_epoch,
                                spec.steps_key)
    tx = optim.make_optimizer(spec.optimizer, total)
    pipeline = _pipeline(ctx, ctx.train_src, seed=spec.seed, train=True, with_index=True)
    input_shape = tuple(pipeline.output_shape)
    ema = config.train.ema_decay > 0
    init_fn = state_lib.make_init_fn(model, tx, input_shape, ema=ema)
    build, abstract, shardings = state_lib.create_sharded(
        init_fn, jax.random.PRNGKey(spec.seed), ctx.mesh, config.mesh.params)
    train_step = make_subclass_train_step(
        model, tx, mesh=ctx.mesh, state_shardings=shardings, num_classes=ctx.num_classes,
        temperature=temperature, alpha=alpha, ema_decay=config.train.ema_decay)
    eval_step = steps_lib.make_eval_step(
        aggregated_logits_fn(model, ctx.num_classes, use_ema=ema), mesh=ctx.mesh,
        shardings=shardings, teacher=spec.teacher)

    def to_global(b):
        b = dict(b, target=log_targets[b["index"]])
        del b["index"]
        return sharding.to_global_batch(b, ctx.mesh)

    run_dir = os.path.join(ctx.workdir, "checkpoints", spec.name.replace("/", "_"))
    with ckpt_lib.Checkpointer(run_dir, max_to_keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoint) as checkpointer, \
            contextlib.closing(pipeline):
        return loop.fit(
            name=spec.name, init_state=build, abstract_state=abstract, step_fn=train_step,
            pipeline=pipeline, to_global=to_global,
            eval_fn=lambda state: train.evaluate(ctx, eval_step, state),
            checkpointer=checkpointer,
            meta=_meta(spec, num_outputs, abstract, total, input_shape),
            writer=ctx.writer,
            cfg=loop.LoopConfig(
                total_steps=total, log_every=config.train.log_every,
                eval_every=config.train.eval_every,
                checkpoint_every=config.train.checkpoint_every,
                on_nonfinite=config.train.on_nonfinite, progress=config.train.progress),
        )


# ------------------------------------------------------------------------------------ results
def plot_subspace(path: str, table: dict, fine_labels: np.ndarray, labels: np.ndarray,
                  title: str) -> None:
    """Per class: training examples in the first two principal directions of that class's
    (projected) teacher embeddings, coloured by hard pseudo-subclass, drawn as their true digit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = int(labels.max()) + 1
    fig = Figure(figsize=(5.0 * num_classes, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
              "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    s = table["info"]["subclasses"]
    for c in range(num_classes):
        ax = fig.add_subplot(1, num_classes, c + 1)
        sel = labels == c
        xy, a, f = table["coords"][sel], table["assign"][sel] - c * s, fine_labels[sel]
        for d in np.unique(f):
            for j in np.unique(a):
                m = (f == d) & (a == j)
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], marker=f"${d}$", s=28,
                               color=colors[j % len(colors)], linewidths=0.3)
        ax.set_title(f"class {c}: colour = pseudo-subclass, glyph = digit", fontsize=9)
        ax.set_xlabel("principal direction 1 (scaled)")
        ax.set_ylabel("principal direction 2 (scaled)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    report.write_bytes_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the whole experiment; returns the flat results written to ``results.json``."""
    t0 = time.time()
    validate_config(config)
    is_main = jax.process_index() == 0
    # Mesh and data: the fine-labelled splits, relabelled to the few-class task.
    workdir, mesh = train.start(config, workdir)
    fine_train, fine_test = train.load_splits(config, in_memory=True)
    train_src = relabel_source(fine_train, config.few_class.relabel)
    test_src = relabel_source(fine_test, config.few_class.relabel)
    num_classes = train_src.info.num_classes
    writer = MetricWriter(workdir, enabled=is_main)
    ctx = train.Context(config, workdir, mesh, train_src, test_src, num_classes, writer)

    # The subspace must fit the teacher's embedding: checked before the teacher trains.
    input_shape = tuple(_pipeline(ctx, train_src, seed=0, train=False).output_shape)
    if not config.teacher.init:
        t_model = models.build(config.teacher.model, num_classes=num_classes,
                               **config.teacher.model_kwargs)
        t_shapes = jax.eval_shape(lambda r: state_lib.init_variables(t_model, r, input_shape),
                                  jax.random.PRNGKey(0))
        check_embedding(config, features_lib.intermediate_shapes(t_model, t_shapes, input_shape),
                        num_classes)

    # Teacher, on the few-class labels.
    teacher_dir = config.teacher.init or os.path.join(workdir, "checkpoints", "teacher")
    if not config.teacher.init:
        train.train_run(ctx, train.RunSpec("teacher", config.teacher.model,
                                           dict(config.teacher.model_kwargs), config.seed,
                                           config.teacher, "config.teacher",
                                           config.teacher.optimizer))
    t_model, teacher, teacher_meta = train.load_teacher(teacher_dir, mesh, config.mesh.params,
                                                        num_classes)
    check_embedding(config, features_lib.intermediate_shapes(t_model, teacher.variables,
                                                             input_shape), num_classes)
    teacher_record = {"path": teacher_dir, "sha256": teacher_meta["sha256"]}

    # Pseudo-subclass targets, once.
    table = pseudo_subclass_table(ctx, teacher, teacher_meta["sha256"], fine_train.labels)
    table_record = {"path": table["path"], "sha256": table["info"]["sha256"]}
    writer.write_scalars(0, {k: table["info"][k] for k in (
        "purity", "purity_one_subclass", "within_class_entropy_nats")}, prefix="lelp/table")
    oracle_record = {"path": table["path"],
                     "sha256": _sha(table["oracle_log_targets"])}

    # Students: same seeds, steps and data order for every kind.
    kinds = KINDS if config.lelp.oracle else KINDS[:3]
    finals: dict[str, list[dict]] = {k: [] for k in kinds}
    run_names = ["teacher"]
    for i in range(config.num_seeds):
        seed = config.seed + i
        for kind in kinds:
            name = f"{kind}/seed{seed}"
            run_names.append(name)
            rs = train.RunSpec(
                name, config.student.model, dict(config.student.model_kwargs), seed,
                config.train, "config.train", config.optimizer, teacher,
                distill=kind != "scratch",
                teacher_record={"lelp": table_record, "oracle": oracle_record}.get(
                    kind, teacher_record))
            if kind in ("scratch", "kd"):
                _, m = train.train_run(ctx, rs)
            elif kind == "lelp":
                _, m = train_subclass_run(ctx, rs, table["log_targets"],
                                          temperature=config.kd.temperature,
                                          alpha=config.kd.alpha)
            else:  # the true fine labels, plain CE over them
                _, m = train_subclass_run(ctx, rs, table["oracle_log_targets"],
                                          temperature=1.0, alpha=1.0)
            finals[kind].append(m)
    teacher_eval = train.evaluate(
        ctx, steps_lib.make_eval_step(teacher.fn, mesh=mesh, shardings=teacher.shardings),
        teacher.variables)
    writer.close()

    # Results.
    info = table["info"]
    results = {
        "teacher/acc": teacher_eval["acc"],
        "teacher/step": float(teacher_meta["step"]),
        "num_seeds": float(config.num_seeds),
        "lelp/purity": info["purity"],
        "lelp/purity_one_subclass": info["purity_one_subclass"],
        "lelp/within_class_entropy_nats": info["within_class_entropy_nats"],
        "wall_time_s": time.time() - t0,
    }
    results.update(train.summarize(finals))
    if is_main:
        report.write_results(os.path.join(workdir, "results.json"), results)
        train.write_teacher_record(workdir, teacher_dir, teacher_meta)
        l = config.lelp
        labels = {
            "scratch": "student, scratch (CE)",
            "kd": f"student, KD {config.kd.loss} (T={config.kd.temperature:g})",
            "lelp": f"student, LELP ({l.split}, m={l.subspace_dim}, S={l.subclasses})",
            "oracle": f"student, oracle: true subclasses (S={info['fine_subclasses']})",
        }
        rows = [{"model": f"teacher ({teacher_meta['model']})",
                 "test acc (%)": f"{100 * teacher_eval['acc']:.2f}",
                 "agreement w/ teacher (%)": "100.00"}]
        for kind in kinds:
            rows.append({
                "model": f"{labels[kind]} ({config.student.model})",
                "test acc (%)": report.fmt_mean_std([m["acc"] for m in finals[kind]]),
                "agreement w/ teacher (%)": report.fmt_mean_std(
                    [m["agreement"] for m in finals[kind]]),
            })
        print(report.format_table(
            rows, title=f"{train_src.info.name} ({num_classes} classes): {config.num_seeds} "
                        f"seeds x {config.train.steps or config.train.epochs} "
                        f"{'steps' if config.train.steps else 'epochs'}, alpha="
                        f"{config.kd.alpha:g}, mean +- std"))
        print(f"pseudo-subclasses: purity w.r.t. the true digits {100 * info['purity']:.1f}% "
              f"(one subclass per class: {100 * info['purity_one_subclass']:.1f}%), mean "
              f"within-class target entropy {info['within_class_entropy_nats']:.2f} nats "
              f"(uniform: {np.log(l.subclasses):.2f})")
        report.plot_curves(
            os.path.join(workdir, "accuracy_curves.png"),
            _curves(os.path.join(workdir, "metrics.jsonl"), run_names),
            title=f"Test accuracy on {train_src.info.name}", xlabel="step", ylabel="accuracy")
        plot_subspace(os.path.join(workdir, "lelp_subspace.png"), table, fine_train.labels,
                      train_src.labels,
                      title=f"teacher '{l.layer}' embeddings, {l.split} split "
                            f"(purity {100 * info['purity']:.1f}%)")
        print(f"results: {os.path.join(workdir, 'results.json')}  plots: "
              f"{os.path.join(workdir, 'accuracy_curves.png')}, "
              f"{os.path.join(workdir, 'lelp_subspace.png')}")
    return results
