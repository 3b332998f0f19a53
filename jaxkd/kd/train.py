"""Knowledge distillation experiment: teacher -> (student from scratch, student with KD) x seeds.

``train_and_evaluate(config, workdir)`` is flat and sectioned:

1. validate the config (names, sizes) before anything expensive;
2. mesh, data;
3. teacher: load it from ``config.teacher.init``, or train it into ``workdir/checkpoints/teacher``
   when no checkpoint is there yet;
4. for each seed: a student from scratch and a student with distillation, same steps and data;
5. results table, ``results.json``, accuracy-curve PNG.

Every run checkpoints into ``workdir/checkpoints/<run>`` and resumes from there, so re-running the
same command after a crash or preemption continues where it stopped and skips finished runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxkd import data as data_lib
from jaxkd import losses, models
from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import config_args, errors, loop, optim, report, sharding
from jaxkd.core import state as state_lib
from jaxkd.core.metrics import MetricWriter, read_metrics
from jaxkd.kd import cache as cache_lib
from jaxkd.kd import crd as crd_lib
from jaxkd.kd import features as features_lib
from jaxkd.kd import steps as steps_lib


# --------------------------------------------------------------------------------- validation
def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails fast with a :class:`ConfigError` naming the key, before anything expensive."""
    try:
        _validate(config)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    config_args.check_choice("config.data.name", config.data.name, data_lib.DATASETS)
    config_args.check_choice("config.student.model", config.student.model, models.MODELS)
    if not config.teacher.init:
        config_args.check_choice("config.teacher.model", config.teacher.model, models.MODELS)
    config_args.check_choice("config.kd.loss", config.kd.loss,
                             (*losses.LOSSES, steps_lib.DEIT, steps_lib.DINO))
    if config.kd.loss == steps_lib.DINO:
        unknown = sorted(set(config.kd.params) - set(steps_lib.DINO_DEFAULTS))
        if unknown:
            raise ValueError(f"config.kd.params has {unknown}, which DINO does not take; valid: "
                             f"{sorted(steps_lib.DINO_DEFAULTS)}")
        if config.kd.influence_scale:
            raise ValueError("config.kd.influence_scale (KD-AIF) does not apply to "
                             "config.kd.loss='dino'")
    config_args.check_choice("config.kd.source", config.kd.source, ("teacher", "ema"))
    config_args.check_choice("config.kd.ensemble.combine", config.kd.ensemble.combine,
                             steps_lib.COMBINE)
    if config.kd.source == "ema":
        if not 0.0 < config.kd.momentum < 1.0:
            raise ValueError(f"config.kd.momentum={config.kd.momentum} must be in (0, 1) for an "
                             f"EMA teacher (config.kd.source='ema')")
        if config.kd.feature.loss:
            raise ValueError("config.kd.feature needs an external teacher; set "
                             "config.kd.feature.loss='' with config.kd.source='ema'")
    if config.kd.loss == steps_lib.DEIT and not (
            config.student.model.startswith("vit")
            and config.student.model_kwargs.get("distill_token", False)):
        raise ValueError(
            "config.kd.loss='deit' trains a ViT's distillation token: set config.student.model to "
            "a vit with model_kwargs.distill_token=True")
    if config.teacher.num_teachers < 1:
        raise ValueError(f"config.teacher.num_teachers={config.teacher.num_teachers} must be >= 1")
    n_teachers = len(_teacher_inits(config)) or config.teacher.num_teachers
    weights = tuple(config.kd.ensemble.weights)
    if weights and (len(weights) != n_teachers or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(
            f"config.kd.ensemble.weights={weights} must be {n_teachers} non-negative numbers (one "
            f"per teacher), not all 0; () means uniform")
    if config.kd.influence_scale < 0:
        raise ValueError(f"config.kd.influence_scale={config.kd.influence_scale} must be >= 0 "
                         f"(0 = no KD-AIF weighting)")
    if config.kd.influence_scale and config.kd.loss == steps_lib.DEIT:
        raise ValueError("config.kd.influence_scale (KD-AIF) weights logit losses; it does not "
                         "apply to config.kd.loss='deit'")
    cache = config.teacher.cache
    if cache.num_samples < 0 or cache.top_k < 0:
        raise ValueError(f"config.teacher.cache.num_samples={cache.num_samples} and top_k="
                         f"{cache.top_k} must be >= 0 (num_samples 0 = no cache, top_k 0 = all "
                         f"classes)")
    if cache.num_samples and (config.kd.feature.loss or config.kd.source != "teacher"):
        raise ValueError("config.teacher.cache stores the teacher's logits only: it cannot feed "
                         "config.kd.feature or an EMA teacher; set config.teacher.cache."
                         "num_samples=0")
    if config.kd.self_distill_steps < 0:
        raise ValueError(f"config.kd.self_distill_steps={config.kd.self_distill_steps} must be "
                         f">= 0 (0 = no second, head-only self-distillation stage)")
    if config.kd.warmup_steps < 0:
        raise ValueError(f"config.kd.warmup_steps={config.kd.warmup_steps} must be >= 0")
    if config.kd.feature.loss:
        config_args.check_choice("config.kd.feature.loss", config.kd.feature.loss,
                                 (*losses.FEATURE_LOSSES, crd_lib.NAME, features_lib.VID))
    config_args.check_choice("config.train.on_nonfinite", config.train.on_nonfinite,
                             ("stop", "skip"))
    for key in ("student", "teacher"):
        if key == "teacher" and config.teacher.init:
            continue  # the architecture comes from the checkpoint
        node = config[key]
        try:
            models.build(node.model, num_classes=2, **node.model_kwargs)
        except TypeError as e:
            raise ValueError(
                f"config.{key}.model_kwargs do not fit config.{key}.model={node.model!r}: {e}. "
                f"A locked config cannot drop keys from the command line; choose the model with "
                f"the config's own arg (e.g. --config configs/kd/<name>.py:{key}=<model>) or edit "
                f"the config file") from None
    if config.train.batch_size < 1:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} must be >= 1")
    if config.num_seeds < 1:
        raise ValueError(f"config.num_seeds={config.num_seeds} must be >= 1")
    if not 0.0 <= config.kd.alpha <= 1.0:
        raise ValueError(f"config.kd.alpha={config.kd.alpha} must be in [0, 1]")
    for key in ("teacher", "train"):
        node = config[key]
        if (node.steps > 0) == (node.epochs > 0):
            raise ValueError(
                f"set exactly one of config.{key}.steps and config.{key}.epochs to a positive "
                f"value (got steps={node.steps}, epochs={node.epochs})"
            )
    if config.kd.temperature <= 0:
        raise ValueError(f"config.kd.temperature={config.kd.temperature} must be > 0")


def _teacher_inits(config) -> list[str]:
    """``config.teacher.init``: one checkpoint directory, or several separated by commas."""
    return [p.strip() for p in config.teacher.init.split(",") if p.strip()]


# --------------------------------------------------------------------------------------- runs
@dataclasses.dataclass
class RunSpec:
    """One supervised training run (teacher, scratch student or KD student)."""

    name: str
    model: str
    model_kwargs: dict
    seed: int
    steps_cfg: Any  # ConfigDict with steps / epochs
    steps_key: str  # its name in the config, for error messages
    optimizer: Any  # ConfigDict, see jaxkd.core.optim
    teacher: steps_lib.Teacher | None = None  # evaluated against (agreement) when given
    distill: bool = False  # train against ``teacher`` too
    teacher_record: dict | None = None  # {"path", "sha256"} of the teacher, kept in the meta
    cache: Any = None  # a jaxkd.kd.cache.Cache: distil from stored teacher outputs instead
    # Two-stage self-distillation: start from these variables ({"params", "batch_stats"}) and
    # train only the top-level parameter ``train_only`` (e.g. "head"), logit KD only.
    init_variables: dict | None = None
    train_only: str | None = None
    objective: dict | None = None  # the distillation settings, recorded in the checkpoint meta
    # Host-side ``(local batch, step) -> batch`` applied to each training batch before it is
    # sharded, e.g. per-example ``kd_weight`` from the labels and the step; ``step`` is the
    # 0-based index of the update the batch feeds (the state's ``step``), also after a resume.
    batch_fn: Callable[[dict, int], dict] | None = None


@dataclasses.dataclass
class Context:
    """What all runs of one experiment share."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    train_src: Any
    test_src: Any
    num_classes: int
    writer: MetricWriter


def _augment(config, train: bool) -> data_lib.AugmentConfig:
    """Training augmentation from ``config.data.augment``; evaluation only resizes."""
    a = config.data.augment
    image_size = config.data.image_size or None
    if not train:
        return data_lib.AugmentConfig(image_size=image_size)
    return data_lib.AugmentConfig(
        random_crop_padding=a.random_crop_padding, random_flip=a.random_flip,
        mixup_alpha=a.mixup_alpha, inception_crop=a.inception_crop, image_size=image_size,
    )


def _pipeline(ctx: Context, src, *, seed: int, train: bool, with_index: bool = False):
    return data_lib.make_pipeline(
        src, global_batch_size=ctx.config.train.batch_size, seed=seed, train=train,
        augment=_augment(ctx.config, train),
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_epochs=None if train else 1, with_index=with_index,
    )


def _meta(spec: RunSpec, num_classes: int, abstract_state: Any, total_steps: int,
          input_shape: tuple[int, ...]) -> dict:
    return {
        "model": spec.model,
        "model_kwargs": json.loads(json.dumps(spec.model_kwargs)),  # tuples -> lists, as stored
        "num_classes": num_classes,
        "param_shapes": ckpt_lib.shapes_signature(abstract_state["params"]),
        "total_steps": total_steps,
        "input_shape": list(input_shape),
        # A distilled student records its teacher by path and content hash (never its weights);
        # resuming it with another teacher is refused by ``check_meta``.
        "teacher_path": (spec.teacher_record or {}).get("path") if spec.distill else None,
        "teacher_sha256": (spec.teacher_record or {}).get("sha256") if spec.distill else None,
        "teacher_cache": (spec.cache.path if spec.distill and spec.cache is not None else None),
        # What the distillation objective was: resuming a KD run under another one is refused.
        "distill": (json.loads(json.dumps(spec.objective)) if spec.distill else None),
    }


def evaluate(ctx: Context, eval_step, variables) -> dict[str, float]:
    """One pass over the test split with ``eval_step``; returns acc, loss (and agreement)."""
    sums = [eval_step(variables, sharding.to_global_batch(b, ctx.mesh))
            for b in _pipeline(ctx, ctx.test_src, seed=0, train=False)]
    return steps_lib.summarize_eval(sums)


def _feature_term(config, model, teacher_model, teacher_vars, input_shape, num_data):
    """The configured feature term, checked against the models' sown layers, and its adapters:
    ``(term, aux_init, adapter_apply)``, or ``(term, aux_init, CRDSpec)`` for CRD.

    ``teacher_vars`` may be arrays or ``ShapeDtypeStruct``s (to check a config before the teacher
    is trained).
    """
    f = config.kd.feature
    term = features_lib.FeatureTerm(
        loss=f.loss,
        student_layers=features_lib.parse_layers(f.student_layers,
                                                 "config.kd.feature.student_layers"),
        teacher_layers=features_lib.parse_layers(f.teacher_layers,
                                                 "config.kd.feature.teacher_layers"),
        weight=f.weight, adapter=f.adapter, params=tuple(sorted(f.params.to_dict().items())))
    if teacher_model is None:
        raise errors.ConfigError("config.kd.feature needs a live teacher, not cached logits")
    s_vars = jax.eval_shape(lambda r: state_lib.init_variables(model, r, input_shape),
                            jax.random.PRNGKey(0))
    s_shapes = features_lib.intermediate_shapes(model, s_vars, input_shape)
    t_shapes = features_lib.intermediate_shapes(teacher_model, teacher_vars, input_shape)
    if term.loss == crd_lib.NAME:
        if len(term.student_layers) != 1 or len(term.teacher_layers) != 1:
            raise errors.ConfigError("config.kd.feature.loss='crd' takes one student and one "
                                     "teacher layer")
        features_lib.check_layers(dataclasses.replace(term, adapter="none"), s_shapes, t_shapes)
        if term.adapter != "none":
            raise errors.ConfigError("CRD learns its own projection heads; set "
                                     "config.kd.feature.adapter='none'")
        spec = crd_lib.spec_from_params(dict(term.params), num_data)
        init = crd_lib.aux_init(spec, s_shapes[term.student_layers[0]],
                                t_shapes[term.teacher_layers[0]])
        return dataclasses.replace(term, params=()), init, spec
    features_lib.check_layers(term, s_shapes, t_shapes)
    aux_init, adapter_apply = features_lib.make_adapters(term, s_shapes, t_shapes)
    features_lib.check_loss_accepts(term, s_shapes, t_shapes, aux_init, adapter_apply)
    return term, aux_init, adapter_apply


def train_run(ctx: Context, spec: RunSpec) -> tuple[dict, dict[str, float]]:
    """Trains (or resumes, or just re-evaluates a finished) run; returns ``(state, eval)``."""
    config = ctx.config
    model = models.build(spec.model, num_classes=ctx.num_classes, **spec.model_kwargs)
    steps_per_epoch = max(1, len(ctx.train_src) // config.train.batch_size)
    total = optim.resolve_steps(spec.steps_cfg.steps, spec.steps_cfg.epochs, steps_per_epoch,
                                spec.steps_key)
    tx = optim.make_optimizer(spec.optimizer, total)
    if spec.train_only:
        tx = _only(tx, spec.train_only)
    use_crd = spec.distill and config.kd.feature.loss == crd_lib.NAME
    from_cache = spec.distill and spec.cache is not None
    if from_cache:  # the stored augmentations, replayed, with the teacher's stored outputs
        pipeline = cache_lib.make_cache_pipeline(
            spec.cache, ctx.train_src, global_batch_size=config.train.batch_size,
            seed=spec.seed, process_index=jax.process_index(),
            process_count=jax.process_count())
    else:
        pipeline = _pipeline(ctx, ctx.train_src, seed=spec.seed, train=True,
                             with_index=use_crd)
    input_shape = tuple(pipeline.output_shape)
    feature, aux_init, adapter_apply, crd = None, None, None, None
    if spec.distill and config.kd.feature.loss and not spec.train_only:
        feature, aux_init, adapter_apply = _feature_term(
            config, model, spec.teacher.model, spec.teacher.variables, input_shape,
            len(ctx.train_src))
        if use_crd:
            crd, adapter_apply = adapter_apply, None
    self_distill = spec.distill and config.kd.source == "ema"
    ema_decay = config.kd.momentum if self_distill else config.train.ema_decay
    init_fn = state_lib.make_init_fn(model, tx, input_shape, ema=ema_decay > 0,
                                     aux_init=aux_init)
    if crd is not None:
        base_init = init_fn

        def init_fn(rng):  # noqa: F811 - the base state plus CRD's memory banks
            return dict(base_init(rng), crd=crd_lib.state_init(crd, jax.random.fold_in(rng, 2)))
    if spec.distill and config.kd.loss == steps_lib.DINO:
        dino_base = init_fn

        def init_fn(rng):  # noqa: F811 - plus DINO's centre of the teacher outputs
            return dict(dino_base(rng), kd_center=jnp.zeros((ctx.num_classes,), jnp.float32))
    build, abstract, shardings = state_lib.create_sharded(
        init_fn, jax.random.PRNGKey(spec.seed), ctx.mesh, config.mesh.params
    )
    if spec.init_variables is not None:
        fresh, start = build, spec.init_variables

        def build():  # copies: the step donates the state, and ``start`` is also the teacher
            return dict(fresh(), params=jax.tree.map(lambda x: x.copy(), start["params"]),
                        batch_stats=jax.tree.map(lambda x: x.copy(),
                                                 start.get("batch_stats", {})))
    train_step = steps_lib.make_train_step(
        model, tx, mesh=ctx.mesh, state_shardings=shardings,
        teacher=(cache_lib.cached_teacher(ctx.num_classes) if from_cache else spec.teacher)
        if spec.distill and not self_distill else None,
        distill=steps_lib.DistillConfig(
            config.kd.loss, config.kd.alpha, config.kd.temperature,
            tuple(sorted(config.kd.params.to_dict().items())),
            warmup_steps=config.kd.warmup_steps, source="ema" if self_distill else "teacher",
            influence_scale=config.kd.influence_scale),
        ema_decay=ema_decay, feature=feature, adapter_apply=adapter_apply, crd=crd,
    )
    eval_step = steps_lib.make_eval_step(
        steps_lib.student_logits_fn(model, use_ema=config.train.ema_decay > 0),
        mesh=ctx.mesh, shardings=shardings, teacher=spec.teacher,
    )

    def to_global(batch: dict) -> dict:
        if spec.batch_fn is not None:  # after next(), the pipeline's step counts this batch too
            batch = spec.batch_fn(batch, pipeline.get_state()["step"] - 1)
        return sharding.to_global_batch(batch, ctx.mesh)

    run_dir = os.path.join(ctx.workdir, "checkpoints", spec.name.replace("/", "_"))
    with ckpt_lib.Checkpointer(run_dir, max_to_keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoint) as checkpointer, \
            contextlib.closing(pipeline):
        state, metrics = loop.fit(
            name=spec.name, init_state=build, abstract_state=abstract, step_fn=train_step,
            pipeline=pipeline,
            to_global=to_global,
            eval_fn=lambda state: evaluate(ctx, eval_step, state), checkpointer=checkpointer,
            meta=_meta(spec, ctx.num_classes, abstract, total, input_shape),
            writer=ctx.writer,
            cfg=loop.LoopConfig(
                total_steps=total, log_every=config.train.log_every,
                eval_every=config.train.eval_every,
                checkpoint_every=config.train.checkpoint_every,
                on_nonfinite=config.train.on_nonfinite, progress=config.train.progress,
            ),
        )
    return state, metrics


def distill_objective(config: ml_collections.ConfigDict) -> dict:
    """The settings that define a KD student's objective (``config.kd`` and the teacher cache)."""
    return {"kd": config.kd.to_dict(), "cache": config.teacher.cache.to_dict()}


def _only(tx, name: str):
    """``tx`` on the top-level parameter ``name``; every other parameter frozen (zero update)."""
    import optax  # pylint: disable=g-import-not-at-top

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: "train" if k == name else "freeze", v)
                for k, v in params.items()}

    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def _self_distill(ctx: Context, seed: int, state: dict, run_dir: str):
    """Stage 2 of two-stage self-distillation (DWPose): the finished KD student teaches itself,
    only its ``head`` trains (logit KD with config.kd's loss, alpha and T) for
    ``config.kd.self_distill_steps`` steps. Returns ``(state, eval)`` of the stage-2 run."""
    config = ctx.config
    model = models.build(config.student.model, num_classes=ctx.num_classes,
                         **config.student.model_kwargs)
    variables = {"params": state["params"]}
    if state["batch_stats"]:
        variables["batch_stats"] = state["batch_stats"]
    shardings = jax.tree.map(lambda x: x.sharding, variables)
    teacher = steps_lib.Teacher.live(model, variables, shardings)
    steps_cfg = ml_collections.ConfigDict(dict(steps=config.kd.self_distill_steps, epochs=0.0))
    return train_run(ctx, RunSpec(
        f"kd_self/seed{seed}", config.student.model, dict(config.student.model_kwargs), seed,
        steps_cfg, "config.kd.self_distill_steps", config.optimizer, teacher, distill=True,
        teacher_record={"path": run_dir, "sha256": ckpt_lib.params_hash(variables)},
        init_variables=variables, train_only="head", objective=distill_objective(config)))


def _check_feature_term(ctx: Context) -> None:
    config = ctx.config
    input_shape = tuple(_pipeline(ctx, ctx.train_src, seed=0, train=False).output_shape)
    t_model = models.build(config.teacher.model, num_classes=ctx.num_classes,
                           **config.teacher.model_kwargs)
    _feature_term(
        config, models.build(config.student.model, num_classes=ctx.num_classes,
                             **config.student.model_kwargs),
        t_model, jax.eval_shape(lambda r: state_lib.init_variables(t_model, r, input_shape),
                                jax.random.PRNGKey(0)), input_shape, len(ctx.train_src))


def check_config(config: ml_collections.ConfigDict) -> None:
    """Everything :func:`train_and_evaluate` checks before training, without training: names,
    sizes, the dataset, and a feature term against both architectures (shapes only)."""
    validate_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    data_dir = config.data.data_dir or None
    train_src = data_lib.load(config.data.name, "train", data_dir=data_dir)
    ctx = Context(config, "", mesh, train_src, None, train_src.info.num_classes, None)
    if config.kd.feature.loss and not config.teacher.init:
        _check_feature_term(ctx)


# ------------------------------------------------------------------------------------ teacher
def load_teacher(directory: str, mesh, strategy: str,
                 num_classes: int) -> tuple[Any, steps_lib.Teacher, dict]:
    """Restores the params (and batch stats) of the latest checkpoint in ``directory``.

    The architecture is rebuilt from the checkpoint's metadata, so a teacher needs only its path.
    A teacher whose number of classes differs from ``num_classes`` (the student's) is refused
    before anything is read. Returns ``(model, teacher, meta)``.
    """
    with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise errors.ConfigError(
                f"config.teacher.init={directory!r} holds no checkpoint. Point it at the "
                f"checkpoints/<run> directory of a finished run, or set config.teacher.init='' "
                f"to train a teacher inside the workdir."
            )
        meta = checkpointer.read_meta(step)
        if meta["num_classes"] != num_classes:
            raise errors.ConfigError(
                f"the teacher in {directory} predicts {meta['num_classes']} classes but the "
                f"student's dataset has {num_classes}; use a teacher trained on the same label set"
            )
        if step < meta["total_steps"] and jax.process_index() == 0:
            print(f"jaxkd: warning: the teacher in {directory} stopped at step {step} of "
                  f"{meta['total_steps']}; using it as it is", file=sys.stderr, flush=True)
        model = models.build(meta["model"], num_classes=meta["num_classes"],
                             **meta["model_kwargs"])
        if "input_shape" not in meta:
            raise ckpt_lib.CheckpointMismatchError(
                f"{directory} has no input_shape in its metadata; it was not written by jaxkd"
            )
        shapes = jax.eval_shape(
            lambda r: state_lib.init_variables(model, r, tuple(meta["input_shape"])),
            jax.random.PRNGKey(0),
        )
        target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
        shardings = sharding.param_shardings(target, mesh, strategy)
        abstract = sharding.with_shardings(target, shardings)
        restored = checkpointer.restore_subtree(step, abstract)
    variables = {"params": restored["params"]}
    if restored.get("batch_stats"):
        variables["batch_stats"] = restored["batch_stats"]
    var_shardings = {k: shardings[k] for k in variables}
    meta["step"] = step
    meta["sha256"] = ckpt_lib.params_hash(variables)
    return model, steps_lib.Teacher.live(model, variables, var_shardings), meta


def _teacher_cache(ctx: Context, teacher: steps_lib.Teacher, teacher_meta: dict):
    """Loads ``config.teacher.cache.dir`` (default ``workdir/teacher_cache``), building it first
    when it does not exist; a cache built for another teacher, dataset or augmentation is
    refused with a message naming the mismatch."""
    c = ctx.config.teacher.cache
    path = c.dir or os.path.join(ctx.workdir, "teacher_cache")
    augment = _augment(ctx.config, True)
    top_k = c.top_k or ctx.num_classes
    if not os.path.exists(path):
        manifest = cache_lib.build_cache(
            path, teacher=teacher, source=ctx.train_src, augment=augment,
            num_samples=c.num_samples, top_k=top_k, seed=ctx.config.seed,
            batch_size=ctx.config.train.batch_size, mesh=ctx.mesh,
            teacher_sha256=teacher_meta["sha256"], dtype=c.dtype,
            progress=ctx.config.train.progress)
        if jax.process_index() == 0:
            print(f"teacher cache: {path} ({manifest.get('bytes_per_example', 0):.0f} bytes per "
                  f"example)", flush=True)
    return cache_lib.load_cache(path, source=ctx.train_src, teacher_sha256=teacher_meta["sha256"],
                                num_classes=ctx.num_classes, augment=augment,
                                num_samples=c.num_samples, top_k=top_k)


def _evaluate_ema(ctx: Context, state: dict) -> dict[str, float]:
    """Test metrics of the EMA parameters of a (momentum-distilled) student state."""
    model = models.build(ctx.config.student.model, num_classes=ctx.num_classes,
                         **ctx.config.student.model_kwargs)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = steps_lib.make_eval_step(steps_lib.student_logits_fn(model, use_ema=True),
                                    mesh=ctx.mesh, shardings=shardings)
    return evaluate(ctx, step, state)


# ------------------------------------------------------------------------------------ results
def _curves(metrics_path: str, names: list[str]) -> dict[str, list[list[tuple[int, float]]]]:
    """Eval-accuracy curves per run group (``kd`` -> one series per seed), from metrics.jsonl."""
    rows = read_metrics(metrics_path)
    per_run: dict[str, dict[int, float]] = {}
    for row in rows:
        for name in names:
            key = f"{name}/eval/acc"
            if key in row:
                per_run.setdefault(name, {})[int(row["step"])] = float(row[key])
    groups: dict[str, list] = {}
    for name, series in per_run.items():
        group = name.split("/")[0]
        groups.setdefault(group, []).append(sorted(series.items()))
    return groups


def summarize(finals: dict[str, list[dict]],
              metrics: tuple[str, ...] = ("acc", "agreement", "loss")) -> dict[str, float]:
    """``{group}/{metric}_mean`` and ``_std`` over each run group's final evals; a metric the
    group's runs do not report (agreement without a teacher) is left out."""
    out = {}
    for kind, ms in finals.items():
        for metric in metrics:
            if metric in ms[0]:
                out[f"{kind}/{metric}_mean"], out[f"{kind}/{metric}_std"] = report.mean_std(
                    [m[metric] for m in ms])
    return out


def write_teacher_record(workdir: str, teacher_dir: str, teacher_meta: dict, **extra) -> None:
    """``teacher.json``: the teacher's path, parameter hash, step and architecture."""
    report.write_json_atomic(os.path.join(workdir, "teacher.json"), {
        "path": teacher_dir, "sha256": teacher_meta["sha256"], "step": teacher_meta["step"],
        "model": teacher_meta["model"], "model_kwargs": teacher_meta["model_kwargs"], **extra})


# ---------------------------------------------------------------------------------------- main
def start(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, Any]:
    """What every KD driver does first: ``(absolute workdir, mesh)``, with ``config.json``
    written by process 0 and the batch size checked against the mesh."""
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        report.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    try:
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
        sharding.check_batch_size(config.train.batch_size, mesh)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    return workdir, mesh


def load_splits(config: ml_collections.ConfigDict, **kwargs) -> tuple[Any, Any]:
    """``(train, eval)`` sources of ``config.data`` (``kwargs`` go to :func:`jaxkd.data.load`)."""
    data_dir = config.data.data_dir or None
    train_src = data_lib.load(config.data.name, "train", data_dir=data_dir, **kwargs)
    test_src = data_lib.load(config.data.name, data_lib.DATASETS[config.data.name].eval_split,
                             data_dir=data_dir, **kwargs)
    return train_src, test_src


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the whole experiment; returns the flat results written to ``results.json``."""
    t0 = time.time()
    validate_config(config)
    is_main = jax.process_index() == 0
    workdir, mesh = start(config, workdir)
    train_src, test_src = load_splits(config)
    num_classes = train_src.info.num_classes
    writer = MetricWriter(workdir, enabled=is_main)
    ctx = Context(config, workdir, mesh, train_src, test_src, num_classes, writer)

    # A feature term is checked against both architectures before anything trains.
    if config.kd.feature.loss and not config.teacher.init:
        _check_feature_term(ctx)

    # Teacher(s): loaded from config.teacher.init (one path, or several separated by commas), or
    # trained into the workdir (config.teacher.num_teachers of them, seeds seed, seed + 1, ...).
    # An EMA teacher (config.kd.source == "ema") is the KD student's own moving average instead.
    teacher, teacher_meta, member_evals, teacher_dir = None, None, [], ""
    run_names = []
    if config.kd.source == "teacher":
        teacher_dirs = _teacher_inits(config)
        if not teacher_dirs:
            for k in range(config.teacher.num_teachers):
                name = "teacher" if k == 0 else f"teacher_{k}"
                train_run(ctx, RunSpec(name, config.teacher.model,
                                       dict(config.teacher.model_kwargs), config.seed + k,
                                       config.teacher, "config.teacher", config.teacher.optimizer))
                teacher_dirs.append(os.path.join(workdir, "checkpoints", name))
                run_names.append(name)
        members = [load_teacher(d, mesh, config.mesh.params, num_classes) for d in teacher_dirs]
        teacher_dir = ",".join(teacher_dirs)
        if len(members) == 1:
            _, teacher, teacher_meta = members[0]
        else:
            teacher = steps_lib.Teacher.ensemble(
                [t for _, t, _ in members], tuple(config.kd.ensemble.weights) or None,
                config.kd.ensemble.combine)
            teacher_meta = dict(members[0][2])
            teacher_meta["sha256"] = hashlib.sha256(
                "".join(m["sha256"] for _, _, m in members).encode()).hexdigest()
            teacher_meta["model"] = "+".join(m["model"] for _, _, m in members)
            teacher_meta["model_kwargs"] = [m["model_kwargs"] for _, _, m in members]
            member_evals = [evaluate(ctx, steps_lib.make_eval_step(
                t.fn, mesh=mesh, shardings=t.shardings), t.variables) for _, t, _ in members]

    # Cached teacher outputs (dataset reinforcement): the teacher runs once over
    # config.teacher.cache.num_samples augmentations of every training example; the KD students
    # then read its stored top-k outputs instead of running it.
    cache = None
    if config.teacher.cache.num_samples:
        cache = _teacher_cache(ctx, teacher, teacher_meta)

    # Students: from scratch and distilled, same seeds, steps and data order.
    finals: dict[str, list[dict]] = {"scratch": [], "kd": []}
    ema_evals = []
    for i in range(config.num_seeds):
        seed = config.seed + i
        for kind in ("scratch", "kd"):
            name = f"{kind}/seed{seed}"
            run_names.append(name)
            # Both students are evaluated against the teacher (agreement); only one learns from it.
            kwargs = dict(config.student.model_kwargs)
            if kind == "scratch" and config.kd.loss == steps_lib.DEIT:
                kwargs["distill_token"] = False  # DeiT's baseline: the same ViT without it
            state, m = train_run(ctx, RunSpec(
                name, config.student.model, kwargs, seed,
                config.train, "config.train", config.optimizer, teacher, distill=kind == "kd",
                teacher_record={"path": teacher_dir,
                                "sha256": teacher_meta["sha256"] if teacher_meta else None},
                cache=cache, objective=distill_objective(config),
            ))
            finals[kind].append(m)
            if kind == "kd" and config.kd.source == "ema":
                ema_evals.append(_evaluate_ema(ctx, state))
            if kind == "kd" and config.kd.self_distill_steps:
                run_names.append(f"kd_self/seed{seed}")
                _, m2 = _self_distill(ctx, seed, state, os.path.join(
                    workdir, "checkpoints", name.replace("/", "_")))
                finals.setdefault("kd_self", []).append(m2)
    if teacher is not None:
        teacher_eval = evaluate(
            ctx, steps_lib.make_eval_step(teacher.fn, mesh=mesh, shardings=teacher.shardings),
            teacher.variables)
        teacher_label = f"teacher ({teacher_meta['model']})"
    else:
        teacher_eval = {"acc": report.mean_std([e["acc"] for e in ema_evals])[0]}
        teacher_meta = {"step": config.train.steps, "sha256": None, "model": "ema",
                        "model_kwargs": {}}
        teacher_label = f"EMA teacher of the KD student ({config.student.model})"
    writer.close()

    # Results.
    results = {
        "teacher/acc": teacher_eval["acc"],
        "teacher/step": float(teacher_meta["step"]),
        "num_seeds": float(config.num_seeds),
        "wall_time_s": time.time() - t0,
    }
    for k, e in enumerate(member_evals):
        results[f"teacher/member{k}/acc"] = e["acc"]
    results.update(summarize(finals))
    # kd_self's agreement would be with itself (its stage-1 network), not with the teacher.
    results.pop("kd_self/agreement_mean", None)
    results.pop("kd_self/agreement_std", None)
    if is_main:
        report.write_results(os.path.join(workdir, "results.json"), results)
        write_teacher_record(workdir, teacher_dir, teacher_meta)
        agree = teacher is not None
        rows = [{"model": f"teacher {k} ({members[k][2]['model']})",
                 "test acc (%)": f"{100 * e['acc']:.2f}"} for k, e in enumerate(member_evals)]
        rows.append({"model": teacher_label, "test acc (%)": (
            f"{100 * teacher_eval['acc']:.2f}" if agree else
            report.fmt_mean_std([e["acc"] for e in ema_evals]))})
        for kind, label in (("scratch", "student, scratch"), ("kd", "student, KD"),
                            ("kd_self", "student, KD + head self-distillation")):
            if kind not in finals:
                continue
            rows.append({
                "model": f"{label} ({config.student.model})",
                "test acc (%)": report.fmt_mean_std([m["acc"] for m in finals[kind]]),
            })
            if agree and kind != "kd_self":
                rows[-1]["agreement w/ teacher (%)"] = report.fmt_mean_std(
                    [m["agreement"] for m in finals[kind]])
        if agree:
            for row in rows[:len(member_evals)]:
                row.setdefault("agreement w/ teacher (%)", "")
            rows[len(member_evals)]["agreement w/ teacher (%)"] = "100.00"
        print(report.format_table(
            rows, title=f"{config.data.name}: {config.num_seeds} seeds x "
                        f"{config.train.steps or config.train.epochs} "
                        f"{'steps' if config.train.steps else 'epochs'}, mean +- std"))
        report.plot_curves(
            os.path.join(workdir, "accuracy_curves.png"),
            _curves(os.path.join(workdir, "metrics.jsonl"), run_names),
            title=f"Test accuracy on {config.data.name}", xlabel="step", ylabel="accuracy",
        )
        print(f"results: {os.path.join(workdir, 'results.json')}  "
              f"plot: {os.path.join(workdir, 'accuracy_curves.png')}")
    if jax.process_count() > 1:  # each process reports what it computed, so they can be compared
        keys = [k for k in ("teacher/acc", "scratch/acc_mean", "kd/acc_mean",
                            "kd/agreement_mean") if k in results]
        print(f"process {jax.process_index()}/{jax.process_count()} results: "
              + " ".join(f"{k}={results[k]:.6f}" for k in keys), flush=True)
    return results

