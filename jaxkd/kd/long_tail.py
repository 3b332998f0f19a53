"""Long-tailed distillation with DeiT-LT-style tail re-weighting of the distillation term.

DeiT-LT (Rangwani et al., CVPR 2024) distils a student from a CNN teacher on a long-tailed data
set and re-weights the distillation loss toward the tail classes with deferred re-weighting (DRW,
Cao et al. 2019): class-balanced weights switched on late in training. This driver reproduces
that recipe at laptop scale on any in-memory classification data set:

1. validate the config (also the long-tail block) before anything expensive;
2. data: a long-tailed subset of the train split (:func:`long_tail_subset`), the eval split as
   it is (balanced for the data sets here);
3. teacher: trained on the long-tailed split (``train.train_run``; with DRW-weighted CE when
   ``config.long_tail.teacher_drw``), or loaded from ``config.teacher.init``;
4. per seed, five students, same model, steps and batches (``VARIANTS``): CE from scratch; CE +
   KD; CE + KD whose per-example ``kd_weight`` is the DRW class weight of the example's label
   (DeiT-LT's re-weighted distillation); CE re-weighted by the same DRW weights without a
   teacher (the class-balanced CE baseline); and CE + KD both re-weighted;
5. overall, per-class and head / medium / tail test accuracy, mean +- std over seeds: printed
   table, ``results.json``, ``per_class.json``, ``per_class_accuracy.png`` and
   ``accuracy_curves.png``.

The weights are fed from the host: :func:`drw_batch_fn` adds them to each training batch from its
labels and the step (``train.RunSpec.batch_fn``). Every run checkpoints into
``workdir/checkpoints/<run>`` and resumes, so re-running the command skips finished runs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxkd import data as data_lib
from jaxkd import models
from jaxkd.core import errors, optim, report, sharding
from jaxkd.core.metrics import MetricWriter
from jaxkd.kd import steps as steps_lib
from jaxkd.kd import train

# name -> (table label, learns from the teacher, which batch entry carries the DRW weights).
VARIANTS = {
    "scratch": ("CE, scratch", False, None),
    "kd": ("CE + KD", True, None),
    "kd_reweight": ("CE + KD, DRW-weighted KD", True, "kd_weight"),
    "ce_reweight": ("DRW-weighted CE, no teacher", False, "mask"),
    "kd_reweight_all": ("DRW-weighted CE + KD", True, "mask"),
}
WEIGHTINGS = ("effective_number", "inverse")
GROUPS = ("head", "medium", "tail")


# ----------------------------------------------------------------------------- long-tail split
def long_tail_counts(n_max: int, imbalance_ratio: float, class_order: Sequence[int]) -> np.ndarray:
    """Exponential profile: class ``class_order[r]`` keeps ``floor(n_max * rho^(-r / (C - 1)))``.

    Returns ``[C]`` int counts indexed by class id. ``rho = 1`` keeps ``n_max`` of every class.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio={imbalance_ratio} must be >= 1")
    c = len(class_order)
    ranks = np.empty(c, np.float64)
    ranks[np.asarray(class_order)] = np.arange(c)
    # The small epsilon keeps exact products (e.g. 100 * 0.5) from flooring one below.
    return np.floor(n_max * imbalance_ratio ** (-ranks / max(c - 1, 1)) + 1e-9).astype(np.int64)


def parse_class_order(spec: str, num_classes: int) -> tuple[int, ...]:
    """``""`` -> ``(0, ..., C-1)``; else a comma-separated permutation of the class ids."""
    if not spec.strip():
        return tuple(range(num_classes))
    try:
        order = tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(
            f"class_order={spec!r} is not a comma-separated list of class ids") from None
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"class_order={spec!r} must be a permutation of 0..{num_classes - 1}")
    return order


def long_tail_subset(src: data_lib.Source, *, imbalance_ratio: float, seed: int,
                     class_order: Sequence[int] | None = None) -> data_lib.ArraySource:
    """A long-tailed subset of the in-memory split ``src`` (:func:`long_tail_counts`).

    ``n_max`` is the smallest class's count in ``src``, so every class can supply its target. Which
    examples a class keeps is a uniform draw fixed by ``seed``; the subset keeps ``src``'s order.

    Raises:
      ValueError: ``imbalance_ratio < 1``, a bad ``class_order``, or a class left with 0 examples.
    """
    images, labels = src.arrays()
    num_classes = src.info.num_classes
    order = tuple(range(num_classes)) if class_order is None else tuple(class_order)
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"class_order {order} must be a permutation of 0..{num_classes - 1}")
    available = np.bincount(labels, minlength=num_classes)
    counts = long_tail_counts(int(available.min()), imbalance_ratio, order)
    if counts.min() < 1:
        empty = int(np.argmin(counts))
        raise ValueError(
            f"imbalance_ratio={imbalance_ratio} leaves class {empty} with 0 of its "
            f"{int(available[empty])} examples (n_max={int(available.min())}); use a ratio <= "
            f"{int(available.min())}")
    rng = np.random.default_rng(seed)
    keep = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), size=int(counts[c]), replace=False)
        for c in range(num_classes)])
    keep.sort()
    info = dataclasses.replace(src.info,
                               split=f"{src.info.split}[long_tail rho={imbalance_ratio:g}]")
    return data_lib.ArraySource(images[keep], labels[keep], info)


# -------------------------------------------------------------------------- weights and DRW
def class_balanced_weights(counts: Sequence[int], *, kind: str = "effective_number",
                           beta: float = 0.999) -> np.ndarray:
    """``[C]`` float32 weights, normalised to mean 1 over classes.

    ``"effective_number"``: ``(1 - beta) / (1 - beta^n_c)`` (Cui et al. 2019; ``beta -> 1`` tends
    to ``1 / n_c``, ``beta = 0`` gives equal weights); ``"inverse"``: ``1 / n_c``.
    """
    n = np.asarray(counts, np.float64)
    if n.min() < 1:
        raise ValueError(f"every class needs at least one example, got counts {n.tolist()}")
    if kind == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta} must be in [0, 1)")
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
    elif kind == "inverse":
        w = 1.0 / n
    else:
        raise ValueError(f"weighting {kind!r} is not one of {WEIGHTINGS}")
    return (w * len(w) / w.sum()).astype(np.float32)


def drw_weights(class_weights: np.ndarray, step: int, start_step: int) -> np.ndarray:
    """The per-class weights at update ``step`` (0-based): all ones before ``start_step``."""
    return class_weights if step >= start_step else np.ones_like(class_weights)


def drw_batch_fn(class_weights: np.ndarray, start_step: int,
                 key: str) -> Callable[[dict, int], dict]:
    """A ``train.RunSpec.batch_fn`` giving each example its label's DRW weight.

    ``key="kd_weight"`` weights the distillation term (``steps.make_train_step``'s hook);
    ``key="mask"`` multiplies the mask, which weights the cross-entropy (a masked mean) and every
    other term. Mixed-up examples get ``lam * w[label] + (1 - lam) * w[label2]``. The losses
    divide by ``max(sum of weights, 1)``, so they are weighted means as long as a batch's weights
    sum to at least 1 (about 14 for a batch of 64 of the digits split with rho = 50).
    """
    if key not in ("kd_weight", "mask"):
        raise ValueError(f"key={key!r} must be 'kd_weight' or 'mask'")

    def batch_fn(batch: dict, step: int) -> dict:
        w = drw_weights(class_weights, step, start_step)
        per_example = w[batch["label"]]
        if "lam" in batch:
            per_example = batch["lam"] * per_example + (1.0 - batch["lam"]) * w[batch["label2"]]
        per_example = per_example.astype(np.float32)
        if key == "mask":
            return dict(batch, mask=batch["mask"] * per_example)
        return dict(batch, kd_weight=per_example)

    return batch_fn


def group_classes(counts: Sequence[int], num_head: int, num_tail: int) -> dict[str, np.ndarray]:
    """Class ids of the head (``num_head`` largest), tail (``num_tail`` smallest) and medium."""
    by_count = np.argsort(-np.asarray(counts), kind="stable")
    c = len(by_count)
    return {"head": np.sort(by_count[:num_head]),
            "medium": np.sort(by_count[num_head:c - num_tail]),
            "tail": np.sort(by_count[c - num_tail:])}


# ------------------------------------------------------------------------------ evaluation
def per_class_correct(ctx: train.Context, logits_fn, variables) -> tuple[np.ndarray, np.ndarray]:
    """``(correct [C], count [C])`` of ``logits_fn(variables, batch)`` over the test split."""
    c = ctx.num_classes

    def sums(variables, batch):
        pred = jnp.argmax(logits_fn(variables, batch), -1)
        onehot = jax.nn.one_hot(batch["label"], c) * batch["mask"][:, None]
        return (jnp.sum(onehot * (pred == batch["label"])[:, None], 0), jnp.sum(onehot, 0))

    fn = jax.jit(sums, out_shardings=sharding.replicated(ctx.mesh))
    correct, count = np.zeros(c), np.zeros(c)
    test_batches = train._pipeline(  # pylint: disable=protected-access
        ctx, ctx.test_src, seed=0, train=False)
    for b in test_batches:
        k, n = jax.device_get(fn(variables, sharding.to_global_batch(b, ctx.mesh)))
        correct += k
        count += n
    return correct, count


def accuracies(correct: np.ndarray, count: np.ndarray,
               groups: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-class (``class3_acc``) and per-group (``tail_acc``: pooled over its test examples)."""
    out = {f"class{k}_acc": float(correct[k] / max(count[k], 1)) for k in range(len(count))}
    for g, classes in groups.items():
        out[f"{g}_acc"] = float(correct[classes].sum() / max(count[classes].sum(), 1))
    return out


# ------------------------------------------------------------------------------ validation
def parse_variants(spec: str) -> tuple[str, ...]:
    """``""`` -> every name in ``VARIANTS``; else a comma-separated subset (run in that order)."""
    names = tuple(v.strip() for v in spec.split(",") if v.strip()) or tuple(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"config.long_tail.variants={spec!r} must name distinct variants among "
                         f"{list(VARIANTS)}")
    return names


def validate_config(config: ml_collections.ConfigDict) -> None:
    """:func:`train.validate_config` plus the ``config.long_tail`` block (:class:`ConfigError`)."""
    train.validate_config(config)
    lt = config.long_tail
    num_classes = data_lib.DATASETS[config.data.name].num_classes
    try:
        if not lt.imbalance_ratio >= 1:
            raise ValueError(f"config.long_tail.imbalance_ratio={lt.imbalance_ratio} must be >= 1")
        parse_class_order(lt.class_order, num_classes)
        if lt.weighting not in WEIGHTINGS:
            raise ValueError(f"config.long_tail.weighting={lt.weighting!r} is not one of "
                             f"{list(WEIGHTINGS)}")
        if not 0.0 <= lt.beta < 1.0:
            raise ValueError(f"config.long_tail.beta={lt.beta} must be in [0, 1)")
        if not 0.0 <= lt.drw_start <= 1.0:
            raise ValueError(f"config.long_tail.drw_start={lt.drw_start} must be in [0, 1]")
        parse_variants(lt.variants)
        if lt.num_head < 1 or lt.num_tail < 1 or lt.num_head + lt.num_tail >= num_classes:
            raise ValueError(
                f"config.long_tail.num_head={lt.num_head} and num_tail={lt.num_tail} must be >= 1 "
                f"and leave at least one of the {num_classes} classes for the medium group")
    except ValueError as e:
        raise errors.ConfigError(str(e).replace("class_order=", "config.long_tail.class_order=")
                                 ) from None


# What a finished run's checkpoint depends on beyond train.RunSpec's meta: a workdir keeps one.
_RECIPE_KEYS = ("imbalance_ratio", "split_seed", "class_order", "weighting", "beta", "drw_start",
                "teacher_drw")
_KD_KEYS = ("loss", "alpha", "temperature", "params")


def _check_same_recipe(workdir: str, config: ml_collections.ConfigDict, is_main: bool) -> None:
    """Records the long-tail recipe in ``workdir/long_tail.json``; refuses to resume another."""
    path = os.path.join(workdir, "long_tail.json")
    recipe = {k: config.long_tail[k] for k in _RECIPE_KEYS}
    recipe.update({f"kd.{k}": report.to_json_compatible(config.kd[k])
                   for k in _KD_KEYS})
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        diff = [f"config.{'' if k.startswith('kd.') else 'long_tail.'}{k}={stored.get(k)!r} "
                f"there, {v!r} now"
                for k, v in recipe.items() if stored.get(k) != v]
        if diff:
            raise errors.ConfigError(
                f"{workdir} holds the runs of another long-tail recipe ({'; '.join(diff)}): its "
                f"finished runs would be reused as they are. Use a fresh --workdir")
    elif is_main:
        report.write_json_atomic(path, recipe)


# ------------------------------------------------------------------------------------ main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the whole experiment; returns the flat results written to ``results.json``."""
    t0 = time.time()
    validate_config(config)
    lt = config.long_tail
    is_main = jax.process_index() == 0
    workdir, mesh = train.start(config, workdir)
    full_train, test_src = train.load_splits(config, in_memory=True)
    num_classes = full_train.info.num_classes
    try:
        train_src = long_tail_subset(
            full_train, imbalance_ratio=lt.imbalance_ratio, seed=lt.split_seed,
            class_order=parse_class_order(lt.class_order, num_classes))
    except ValueError as e:
        raise errors.ConfigError(f"config.long_tail: {e}") from None
    counts = np.bincount(train_src.labels, minlength=num_classes)
    groups = group_classes(counts, lt.num_head, lt.num_tail)
    class_weights = class_balanced_weights(counts, kind=lt.weighting, beta=lt.beta)
    steps_per_epoch = max(1, len(train_src) // config.train.batch_size)  # as train.train_run
    total = optim.resolve_steps(config.train.steps, config.train.epochs, steps_per_epoch,
                                "config.train")
    drw_start = int(round(lt.drw_start * total))
    writer = MetricWriter(workdir, enabled=is_main)
    ctx = train.Context(config, workdir, mesh, train_src, test_src, num_classes, writer)
    _check_same_recipe(workdir, config, is_main)
    if is_main:
        weights = ", ".join(f"{w:.3f}" for w in class_weights)
        print(f"long-tailed {config.data.name} train split: {len(train_src)} examples, counts "
              f"{counts.tolist()}, DRW weights [{weights}] from step {drw_start} of {total}",
              flush=True)

    # Teacher, trained on the long-tailed split (with DRW-weighted CE when teacher_drw: DeiT-LT
    # distils from a teacher trained with a long-tail method).
    teacher_dir = config.teacher.init or os.path.join(workdir, "checkpoints", "teacher")
    if not config.teacher.init:
        teacher_total = optim.resolve_steps(config.teacher.steps, config.teacher.epochs,
                                            steps_per_epoch, "config.teacher")
        train.train_run(ctx, train.RunSpec(
            "teacher", config.teacher.model, dict(config.teacher.model_kwargs), config.seed,
            config.teacher, "config.teacher", config.teacher.optimizer,
            batch_fn=(drw_batch_fn(class_weights, int(round(lt.drw_start * teacher_total)),
                                   "mask") if lt.teacher_drw else None)))
    _, teacher, teacher_meta = train.load_teacher(teacher_dir, mesh, config.mesh.params,
                                                  num_classes)
    teacher_record = {"path": teacher_dir, "sha256": teacher_meta["sha256"]}
    student = models.build(config.student.model, num_classes=num_classes,
                           **config.student.model_kwargs)
    student_logits = steps_lib.student_logits_fn(student, use_ema=config.train.ema_decay > 0)

    # Students: every variant per seed, same model, steps and batches.
    finals: dict[str, list[dict]] = {v: [] for v in parse_variants(lt.variants)}
    run_names = ["teacher"]
    for i in range(config.num_seeds):
        seed = config.seed + i
        for variant in finals:
            _, distill, weight_key = VARIANTS[variant]
            name = f"{variant}/seed{seed}"
            run_names.append(name)
            state, m = train.train_run(ctx, train.RunSpec(
                name, config.student.model, dict(config.student.model_kwargs), seed,
                config.train, "config.train", config.optimizer, teacher, distill=distill,
                teacher_record=teacher_record,
                batch_fn=(drw_batch_fn(class_weights, drw_start, weight_key) if weight_key
                          else None)))
            m.update(accuracies(*per_class_correct(ctx, student_logits, state), groups))
            writer.write_scalars(total, {k: v for k, v in m.items() if k.endswith("_acc")},
                                 prefix=f"{name}/eval")
            finals[variant].append(m)
    teacher_eval = train.evaluate(
        ctx, steps_lib.make_eval_step(teacher.fn, mesh=mesh, shardings=teacher.shardings),
        teacher.variables)
    teacher_eval.update(accuracies(*per_class_correct(ctx, teacher.fn, teacher.variables),
                                   groups))
    writer.close()

    # Results.
    results = {
        "teacher/acc": teacher_eval["acc"],
        "teacher/step": float(teacher_meta["step"]),
        "num_seeds": float(config.num_seeds),
        "long_tail/num_train": float(len(train_src)),
        "long_tail/imbalance_ratio": float(counts.max() / counts.min()),
        "wall_time_s": time.time() - t0,
    }
    for g in GROUPS:
        results[f"teacher/{g}_acc"] = teacher_eval[f"{g}_acc"]
    results.update(train.summarize(
        finals, ("acc", "agreement", "loss", *(f"{g}_acc" for g in GROUPS))))
    if is_main:
        _write_outputs(workdir, config, results, finals, teacher_eval, teacher_meta, counts,
                       groups, class_weights, run_names, teacher_dir)
    return results


def _write_outputs(workdir, config, results, finals, teacher_eval, teacher_meta, counts, groups,
                   class_weights, run_names, teacher_dir) -> None:
    """results.json, per_class.json, teacher.json, the printed table and the two PNGs."""
    c = len(counts)
    report.write_results(os.path.join(workdir, "results.json"), results)
    train.write_teacher_record(workdir, teacher_dir, teacher_meta)
    per_class = {"train_count": counts.tolist(), "drw_weight": class_weights.tolist(),
                 "groups": {g: v.tolist() for g, v in groups.items()},
                 "teacher": [teacher_eval[f"class{k}_acc"] for k in range(c)]}
    for variant, ms in finals.items():
        accs = np.asarray([[m[f"class{k}_acc"] for k in range(c)] for m in ms])
        per_class[variant] = {"mean": accs.mean(0).tolist(),
                              "std": (accs.std(0, ddof=1) if len(ms) > 1 else 0 * accs[0]).tolist()}
    report.write_json_atomic(os.path.join(workdir, "per_class.json"), per_class)

    def pct(values):
        return report.fmt_mean_std(values)

    heads = {g: f"{g} (%)" for g in GROUPS}
    rows = [{"model": f"teacher ({teacher_meta['model']})",
             "test acc (%)": f"{100 * teacher_eval['acc']:.2f}",
             **{heads[g]: f"{100 * teacher_eval[f'{g}_acc']:.2f}" for g in GROUPS},
             "agreement w/ teacher (%)": "100.00"}]
    for variant, ms in finals.items():
        label = VARIANTS[variant][0]
        rows.append({"model": f"{label} ({config.student.model})",
                     "test acc (%)": pct([m["acc"] for m in ms]),
                     **{heads[g]: pct([m[f"{g}_acc"] for m in ms]) for g in GROUPS},
                     "agreement w/ teacher (%)": pct([m["agreement"] for m in ms])})
    steps = config.train.steps or config.train.epochs
    print(report.format_table(rows, title=(
        f"{config.data.name}, long-tailed train split (rho={config.long_tail.imbalance_ratio:g}, "
        f"{int(counts.sum())} examples, counts {counts.tolist()}), balanced test split: "
        f"{config.num_seeds} seeds x {steps} {'steps' if config.train.steps else 'epochs'}, "
        f"mean +- std")))
    print("classes by training count: " + ", ".join(
        f"{g} {groups[g].tolist()}" for g in GROUPS) + "; group accuracy pools its test examples")
    _plot_per_class(os.path.join(workdir, "per_class_accuracy.png"), per_class, c,
                    title=f"{config.data.name}, rho={config.long_tail.imbalance_ratio:g}")
    curves = train._curves(  # pylint: disable=protected-access
        os.path.join(workdir, "metrics.jsonl"), run_names)
    report.plot_curves(
        os.path.join(workdir, "accuracy_curves.png"), curves,
        title=f"Test accuracy, long-tailed {config.data.name}", xlabel="step", ylabel="accuracy")
    print(f"results: {os.path.join(workdir, 'results.json')}  plots: "
          f"{os.path.join(workdir, 'per_class_accuracy.png')}, "
          f"{os.path.join(workdir, 'accuracy_curves.png')}", flush=True)


def _plot_per_class(path: str, per_class: dict, num_classes: int, *, title: str) -> None:
    """Training count per class (top) and per-class test accuracy per variant (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    x = np.arange(num_classes)
    top.bar(x, per_class["train_count"], color="gray")
    top.set_ylabel("train examples")
    top.set_yscale("log")
    top.set_title(title)
    names = ["teacher", *(k for k in VARIANTS if k in per_class)]
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        mean = per_class[name] if name == "teacher" else per_class[name]["mean"]
        err = None if name == "teacher" else per_class[name]["std"]
        bottom.bar(x + (j - (len(names) - 1) / 2) * width, mean, width, yerr=err,
                   label=name, capsize=1.5)
    bottom.set_xticks(x)
    bottom.set_xlabel("class")
    bottom.set_ylabel("test accuracy")
    bottom.set_ylim(0.0, 1.2)  # room for the legend above the bars
    bottom.set_yticks(np.linspace(0.0, 1.0, 6))
    bottom.legend(fontsize="small", ncol=len(names), loc="upper center", columnspacing=1.0)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    report.write_bytes_atomic(path, buffer.getvalue())
