"""``train_and_evaluate(config, workdir)``: a diffusion teacher, a few-step student, and both
evaluated, on toy 2-D data with known densities or on the 8x8 digits by class.

Sections: data -> teacher (trained when missing, reused when its settings match) -> student
(sCD: consistency distillation along the teacher's ODE; sCT: consistency training along the
data's; rCM: sCD plus DMD on the student's own samples, with a fake score; DMD2: the
distribution-matching term alone, fake score updated several times per student step; SDS/VSD:
score distillation on the student as a generator (VSD with the fake score); CD/CT:
discrete-time consistency distillation/training with iCT's improvements; progressive:
students of halving step counts, each matching two steps of the last; guided: a student
taking the guidance scale as an input, then progressive distillation of it) -> evaluation
(teacher at 1..64 ODE steps, student at 1, 2, 4 steps) -> outputs:

- ``results.json``: ``teacher/steps_<n>/<metric>`` and ``student/steps_<n>/<metric>`` with
  metrics ``swd``, ``mmd``, ``logdensity``, ``mode_coverage``, ``off_mode`` (2-D data,
  jaxkd.diffusion.metrics) or ``fd``, ``class_acc`` (digits, jaxkd.diffusion.image_metrics),
  and the training losses, ``sigma_d``, wall times.
- ``samples.npz``: ``samples``, the student's fewest-step samples: ``[10000, 2]`` for 2-D data;
  for digits ``[N, 8, 8, 1]`` pixels 0..16 (the data set's layout) and ``labels`` ``[N]``.
- ``samples.png`` (scatter plots or image grids: data, teacher and student at several step
  counts),
  ``teacher_curves.png`` / ``student_curves.png``, ``metrics.jsonl``, TensorBoard events,
  Orbax checkpoints of both runs (each resumes after an interruption), a results table.
"""

from __future__ import annotations

import functools
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

from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import errors, loop, metrics, report
from jaxkd.diffusion import discrete_cm, dmd, progressive, samplers, scm, tasks, trigflow, viz
from jaxkd.models.denoisers import AdaptiveWeight, GANHead, MLPDenoiser, UNet, bottleneck

__all__ = ["METHODS", "check_config", "train_and_evaluate"]

METHODS = ("scd", "sct", "rcm", "dmd2", "sds", "vsd", "cd", "ct", "progressive", "guided")
DENOISERS = {"mlp": MLPDenoiser, "unet": UNet}
# Settings that do not change what a run computes (a run may resume, or be extended with more
# ``steps``, under other values).
_LOOP_KEYS = ("log_every", "checkpoint_every", "on_nonfinite")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` naming the key for a config that cannot work."""
    if config.method not in METHODS:
        raise errors.ConfigError(f"config.method={config.method!r}; valid: {', '.join(METHODS)}")
    if config.data.name not in tasks.TASKS:
        raise errors.ConfigError(f"config.data.name={config.data.name!r}; valid: "
                                 f"{', '.join(tasks.TASKS)}")
    if config.model.name not in DENOISERS:
        raise errors.ConfigError(f"config.model.name={config.model.name!r}; valid: "
                                 f"{', '.join(DENOISERS)}")
    for key in ("num_classes", "guidance_input"):
        if key in config.model.kwargs:
            raise errors.ConfigError(f"config.model.kwargs.{key} is set by the driver (from the "
                                     "data and the method); remove it")
    for key in ("eval.teacher_steps", "eval.student_steps"):
        steps = config.eval[key.split(".")[1]]
        if not steps or min(steps) < 1:
            raise errors.ConfigError(f"config.{key}={tuple(steps)}: every step count must be "
                                     ">= 1 (a sampler with 0 steps returns the noise)")
    for n in config.eval.student_steps:
        if n > 1 and str(n) not in config.eval.student_times:
            raise errors.ConfigError(
                f"config.eval.student_steps has {n} but config.eval.student_times has no '{n}' "
                "entry (the times of each consistency step)")
        times = _intermediate_times(config, n)
        if len(times) != n - 1 or any(not 0 < t < math.pi / 2 for t in times):
            raise errors.ConfigError(
                f"config.eval.student_times['{n}']={tuple(times)}: {n - 1} intermediate times "
                "in (0, pi/2) (the first step starts at t_max)")
    if config.eval.sampler not in samplers.METHODS:
        raise errors.ConfigError(f"config.eval.sampler={config.eval.sampler!r}; valid: "
                                 f"{', '.join(samplers.METHODS)}")
    if config.sigma_d < 0:
        raise errors.ConfigError(f"config.sigma_d={config.sigma_d} must be > 0 (0: the data's "
                                 "standard deviation, estimated from 10,000 samples)")
    _check_guidance(config)
    s = config.student
    if s.init not in ("teacher", "scratch"):
        raise errors.ConfigError(f"config.student.init={s.init!r}; valid: teacher, scratch")
    if config.method in ("rcm", "dmd2", "sds", "vsd"):
        if config.rcm.sds_weighting not in ("sigma2", "uniform"):
            raise errors.ConfigError(f"config.rcm.sds_weighting={config.rcm.sds_weighting!r}; "
                                     "valid: sigma2, uniform")
        for n in config.rcm.sim_steps:
            if n < 1 or (n > 1 and str(n) not in config.eval.student_times):
                raise errors.ConfigError(
                    f"config.rcm.sim_steps={tuple(config.rcm.sim_steps)}: each count needs "
                    "config.eval.student_times['<n>'] (the times of its steps) and must be >= 1")
        sn = config.rcm.snoopi
        if sn.enabled and not (config.data.name == "sklearn_digits" and 0 < sn.scale_min
                               <= sn.scale_max and config.teacher.cfg_dropout):
            raise errors.ConfigError(
                f"config.rcm.snoopi: random guidance scales in [{sn.scale_min}, {sn.scale_max}] "
                "need class-conditional data, a teacher trained with cfg_dropout > 0 and "
                "0 < scale_min <= scale_max")
        if config.rcm.fake_steps < 1 or config.rcm.weight < 0:
            raise errors.ConfigError(f"config.rcm.fake_steps={config.rcm.fake_steps} must be >= 1 "
                                     f"and config.rcm.weight={config.rcm.weight} >= 0")
    if config.method in ("progressive", "guided"):
        start = config.progressive.start_steps
        if start < 2 or start & (start - 1):
            raise errors.ConfigError(f"config.progressive.start_steps={start} must be a power "
                                     "of two >= 2 (each round halves the steps)")
        bad = [n for n in config.eval.student_steps if n > start // 2 or n & (n - 1)]
        if bad:
            raise errors.ConfigError(
                f"config.eval.student_steps has {bad}: progressive distillation makes students "
                f"of 1, 2, 4, ... {start // 2} steps")
    if config.rcm.gan.enabled and config.method != "dmd2":
        raise errors.ConfigError(f"config.rcm.gan.enabled=True is DMD2's GAN head; "
                                 f"config.method={config.method!r} (use dmd2)")
    if config.rcm.snoopi.enabled and config.method not in ("rcm", "dmd2", "sds", "vsd"):
        raise errors.ConfigError(f"config.rcm.snoopi.enabled=True guides the scores of "
                                 f"rcm/dmd2/sds/vsd; config.method={config.method!r}")
    if s.tbcm.enabled and config.method != "scd":
        raise errors.ConfigError(f"config.student.tbcm.enabled=True trains sCD on the teacher's "
                                 f"trajectories; config.method={config.method!r} (use scd)")
    if s.tangent_warmup < 0 or s.tangent_norm < 0:
        raise errors.ConfigError(f"config.student.tangent_warmup={s.tangent_warmup} and "
                                 f"tangent_norm={s.tangent_norm} must be >= 0")
    if s.optimizer.get("schedule", "constant") not in SCHEDULES:
        raise errors.ConfigError(f"config.student.optimizer.schedule={s.optimizer.schedule!r} "
                                 f"is not valid: use one of {', '.join(SCHEDULES)}")
    ema = s.get("ema", 0.0)
    if not 0 <= ema < 1:
        raise errors.ConfigError(f"config.student.ema={ema} must be in [0, 1) (0: no EMA)")
    if ema and config.method in ("progressive", "guided"):
        raise errors.ConfigError(f"config.student.ema={ema}: the student EMA is for the "
                                 f"consistency and score methods, not {config.method!r} (use 0)")


def _check_guidance(config: ml_collections.ConfigDict) -> None:
    """Classifier-free guidance needs class labels, a teacher trained with label dropout and,
    for guided distillation, a scale inside the range the student was trained on."""
    conditional = config.data.name == "sklearn_digits"
    scale, dropout = config.guidance.scale, config.teacher.cfg_dropout
    if not 0 <= dropout < 1:
        raise errors.ConfigError(f"config.teacher.cfg_dropout={dropout} must be in [0, 1) (the "
                                 "fraction of labels replaced by the null class)")
    if not conditional and (dropout or scale != 1):
        raise errors.ConfigError(
            f"config.data.name={config.data.name!r} has no classes: classifier-free guidance "
            f"needs labels (config.guidance.scale={scale} must be 1, config.teacher.cfg_dropout="
            f"{dropout} 0)")
    if scale != 1 and not dropout:
        raise errors.ConfigError(
            f"config.guidance.scale={scale} needs the unconditional model, but the teacher never "
            "saw the null class (config.teacher.cfg_dropout=0): set it > 0 (0.1 is usual) or "
            "guidance.scale=1")
    if config.method == "guided":
        if not conditional:
            raise errors.ConfigError("config.method='guided' distils classifier-free guidance: "
                                     "it needs class-conditional data (sklearn_digits)")
        lo, hi = config.guided.scale_min, config.guided.scale_max
        if not 0 <= lo <= hi:
            raise errors.ConfigError(f"config.guided.scale_min={lo}, scale_max={hi}: need "
                                     "0 <= scale_min <= scale_max")
        check_scale_in_range(scale, lo, hi, "config.guidance.scale")


def method_label(config: ml_collections.ConfigDict) -> str:
    """The method's name with its enabled options (``vsd + SNOOPI``), for plot titles."""
    options = [name for name, on in (("GAN head", config.rcm.gan.enabled),
                                     ("SNOOPI", config.rcm.snoopi.enabled),
                                     ("TBCM", config.student.tbcm.enabled)) if on]
    return " + ".join([config.method] + options)


def check_scale_in_range(scale: float, lo: float, hi: float, what: str = "guidance scale"
                         ) -> None:
    """Refuses a guidance scale outside a w-conditioned student's trained range."""
    if not lo <= scale <= hi:
        raise errors.ConfigError(
            f"{what}={scale} is outside the range the guidance-conditioned student was trained "
            f"on, [{lo}, {hi}] (config.guided.scale_min/scale_max); its output there is an "
            "extrapolation. Evaluate inside the range or retrain with a wider one")


def _intermediate_times(config: ml_collections.ConfigDict, n: int) -> list[float]:
    """The times of consistency steps 2..n (``config.eval.student_times['<n>']``)."""
    return [float(t) for t in config.eval.student_times.get(str(n), ())]


# --------------------------------------------------------------------------------- networks
def _velocity(net, params, labels=None, guidance=None):
    """The network's velocity function ``(x, t) -> F`` at fixed labels (and guidance input)."""
    args = () if labels is None else (labels,) if guidance is None else (labels, guidance)
    return lambda x, t: net.apply(params, x, t, *args)


def _cfg_velocity(net, params, labels, scale, num_classes: int):
    """The teacher's velocity with classifier-free guidance at ``scale`` (a number or ``[B]``;
    scale 1 or no labels: the conditional / unconditional network itself)."""
    cond = _velocity(net, params, labels)
    if labels is None or (isinstance(scale, (int, float)) and scale == 1):
        return cond
    return samplers.guided(cond, _velocity(net, params, jnp.full_like(labels, num_classes)),
                           scale)


def _init_params(net, task, seed: int, guidance: bool = False):
    args = (jnp.zeros(1, jnp.int32),) if task.num_classes else ()
    args += (jnp.ones(1),) if guidance else ()
    return _jit_init(net, jax.random.key(seed), jnp.zeros((1, *task.shape)), jnp.ones(1), *args)


def _jit_init(module, *args):
    """``module.init(*args)`` as one compiled program (run eagerly, a UNet's init compiled one
    small program per initialiser: the rCM digits smoke run took 78 s that way, 70 s this way)."""
    return jax.jit(module.init)(*args)


def _model_meta(config, task, guidance: bool = False) -> dict:
    meta = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict()}
    if task.num_classes:  # recorded only for conditional data (older 2-D checkpoints lack it)
        meta["num_classes"] = task.num_classes
    if guidance:
        meta["guidance_input"] = True
    return meta


# ---------------------------------------------------------------------------------- training
SCHEDULES = ("constant", "cosine")  # a student's ``optimizer.schedule``


def _adam(cfg: ml_collections.ConfigDict, total_steps: int = 0) -> optax.GradientTransformation:
    """Adam from ``cfg`` (``lr``, ``b2``, ``grad_clip``; ``schedule``: "constant", the default,
    or "cosine", decaying ``lr`` to 0 over ``total_steps``)."""
    schedule = cfg.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise errors.ConfigError(f"optimizer schedule {schedule!r} is not valid: use one of "
                                 f"{', '.join(SCHEDULES)}")
    lr = (optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1)) if schedule == "cosine"
          else cfg.lr)
    tx = optax.adam(lr, b1=0.9, b2=cfg.b2)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx


def ema_update(ema, params, decay: float):
    """``decay * ema + (1 - decay) * params``, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def _fit(name: str, directory: str, init_state, step, total: int, meta: dict, writer,
         cfg: ml_collections.ConfigDict, progress: bool):
    """Runs ``step`` for ``total`` steps under the shared loop (resume, SIGTERM, metrics).

    A ``meta["lr_schedule"]`` (a schedule whose shape depends on ``total``) must equal the one
    the checkpoint in ``directory`` was made with, if it recorded one: such a run cannot be
    extended or shortened on resume (runs without a schedule may be extended).
    """
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=2, async_save=False)
    if "lr_schedule" in meta and checkpointer.latest_step() is not None:
        found = checkpointer.read_meta().get("lr_schedule")
        if found is not None and found != meta["lr_schedule"]:
            checkpointer.close()
            raise ckpt_lib.CheckpointMismatchError(
                f"{directory} holds a run whose {found['schedule']} learning-rate schedule spans "
                f"{found['steps']} steps; config.{name}.steps={total} would change the schedule "
                f"mid-run. Set config.{name}.steps={found['steps']}, or use a fresh --workdir "
                f"(or config.{name}.optimizer.schedule=constant, which can be extended).")
    with checkpointer:
        state, _ = loop.fit(
            name=name, init_state=init_state, abstract_state=jax.eval_shape(init_state),
            step_fn=lambda s, batch: step(s), pipeline=loop.NoData(), to_global=lambda b: b,
            eval_fn=None, checkpointer=checkpointer, meta=meta, writer=writer,
            cfg=loop.LoopConfig(total_steps=total, log_every=cfg.log_every,
                                checkpoint_every=cfg.checkpoint_every,
                                on_nonfinite=cfg.on_nonfinite,
                                on_nonfinite_key=f"config.{name}.on_nonfinite",
                                progress=progress))
    return state


def _guarded(state: dict, new: dict, loss: jax.Array, grads: Any) -> tuple[dict, dict]:
    grad_norm = optax.global_norm(grads)
    return loop.nonfinite_guard(state, new, loss, grad_norm), {"loss": loss,
                                                                "grad_norm": grad_norm}


def _settings(node: ml_collections.ConfigDict, drop: tuple[str, ...]) -> dict:
    out = {k: v for k, v in node.to_dict().items() if k not in (*drop, *_LOOP_KEYS)}
    if not out.get("cfg_dropout", 1):  # recorded only when used (older teachers lack it)
        del out["cfg_dropout"]
    return out


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, num_classes: int) -> jax.Array:
    """Classifier-free guidance's label dropout: each label replaced by the null class
    ``num_classes`` with probability ``rate``."""
    return jnp.where(jax.random.bernoulli(key, rate, labels.shape), num_classes, labels)


def train_teacher(config, task, net, sigma_d: float, directory: str, writer,
                  progress: bool) -> dict:
    """The diffusion teacher's (EMA) parameters, trained or restored from ``directory``.

    With class labels, a fraction ``cfg_dropout`` of them is replaced by the null class (id
    ``num_classes``), so the same network is the unconditional model classifier-free guidance
    needs."""
    tc = config.teacher
    tx = _adam(tc.optimizer)

    def init_state():
        params = _init_params(net, task, tc.seed)
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
            jax.random.key(tc.seed + 1)), "nonfinite": loop.init_nonfinite(),
            "params": params, "ema": params, "opt": tx.init(params)}

    @jax.jit
    def step(state):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_x, k_l, k_drop = jax.random.split(key, 3)
        x0, labels = task.sample(k_x, tc.batch_size)
        if labels is not None and tc.cfg_dropout:
            labels = drop_labels(k_drop, labels, tc.cfg_dropout, task.num_classes)

        def loss_fn(params):
            return jnp.mean(trigflow.diffusion_loss(_velocity(net, params, labels), x0, k_l,
                                                    sigma_d=sigma_d, p_mean=tc.p_mean,
                                                    p_std=tc.p_std))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = ema_update(state["ema"], params, tc.ema)
        new = {**state, "params": params, "ema": ema, "opt": opt, "step": state["step"] + 1}
        return _guarded(state, new, loss, grads)

    meta = {**_model_meta(config, task),
            "distill": {"role": "teacher", "data": config.data.to_dict(), "sigma_d": sigma_d,
                        "settings": _settings(tc, ("dir", "steps"))}}
    state = _fit("teacher", directory, init_state, step, tc.steps, meta, writer, tc, progress)
    return jax.device_get(state["ema"])


def train_student(config, task, net, teacher_params, sigma_d: float, directory: str, writer,
                  progress: bool) -> dict:
    """The few-step student by sCD (``config.method == "scd"``), sCT, rCM (sCD plus the DMD
    regulariser on the student's own samples, with a fake score trained alongside), DMD2,
    SDS/VSD, or discrete CD/CT. With class labels the student is conditional and distils the
    teacher at guidance ``config.guidance.scale``."""
    sc = config.student
    weight_net = AdaptiveWeight(emb_dim=sc.weight_emb_dim)
    tx = _adam(sc.optimizer, sc.steps)
    # An EMA of the student's weights (``student.ema`` > 0), which is then what is returned,
    # sampled and evaluated; 0: the weights themselves (runs made before the key existed).
    # Its decay at update k is min(ema, (1 + k) / (10 + k)), so the initial weights (the
    # teacher's, a poor 1-step model) are forgotten within the first steps whatever the decay.
    student_ema = float(sc.get("ema", 0.0))
    distill = config.method in ("scd", "rcm", "dmd2", "cd", "sds", "vsd")
    discrete = config.method in ("cd", "ct")  # discrete-time consistency (iCT's improvements)
    dc = config.discrete
    scale, num_classes = float(config.guidance.scale), task.num_classes
    teacher_fn = lambda params, labels: _cfg_velocity(net, params, labels, scale, num_classes)

    def sigmas_at(step: int) -> np.ndarray | None:
        """The discrete methods' noise grid at ``step`` (None for the others)."""
        if not discrete:
            return None
        n = (dc.num_steps if config.method == "cd"
             else discrete_cm.curriculum_steps(step, sc.steps, dc.s0, dc.s1))
        return discrete_cm.karras_sigmas(n).astype(np.float32)

    # A distribution term on the student's own samples: DMD (rcm, dmd2) or score distillation
    # (sds; vsd with a fake score). All but sds train a fake score alongside.
    rcm = config.method in ("rcm", "dmd2", "sds", "vsd")
    uses_fake = rcm and config.method != "sds"
    snoopi = rcm and config.rcm.snoopi.enabled
    gan = config.method == "dmd2" and config.rcm.gan.enabled
    head_net = GANHead()
    # DMD2: the distribution-matching term alone; CD/CT: the discrete consistency loss instead.
    consistency = config.method not in ("dmd2", "cd", "ct", "sds", "vsd")
    rc = config.rcm
    fake_tx = _adam(rc.fake_optimizer)
    t0 = samplers.t_max(sigma_d)
    # rCM's backward simulation: the student samples in n steps (n drawn from these counts)
    # with the gradient through the last step only.
    sim_times = [[t0] + _intermediate_times(config, n) for n in rc.sim_steps]

    # TBCM: sCD trained at points of the teacher's own sampling trajectories (no data): a pool
    # of ``tbcm.num_trajectories`` DDIM trajectories on the teacher's Karras grid, made once
    # from the seed (so a resumed run has the same pool); with classes, balanced labels.
    tbcm = sc.tbcm.enabled
    pool = None
    if tbcm:
        grid = jnp.asarray(samplers.karras_times(sc.tbcm.grid_steps, sigma_d))
        n_traj = sc.tbcm.num_trajectories
        z_pool = sigma_d * jax.random.normal(jax.random.key(sc.seed + 3), (n_traj, *task.shape))
        pool_labels = task.eval_labels(n_traj)
        pool_labels = None if pool_labels is None else jnp.asarray(pool_labels)
        pool = jax.jit(lambda tp: trajectory_points(teacher_fn(tp, pool_labels), z_pool, grid,
                                                    sigma_d))(teacher_params)
        if pool_labels is not None:  # trajectory_points orders points time-major
            pool = (*pool, jnp.tile(pool_labels, sc.tbcm.grid_steps))

    def init_state():
        params = teacher_params if sc.init == "teacher" else _init_params(net, task, sc.seed)
        trainable = {"F": params,
                     "w": _jit_init(weight_net, jax.random.key(sc.seed + 2), jnp.ones(1))}
        state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
            jax.random.key(sc.seed + 1)), "nonfinite": loop.init_nonfinite(),
            "params": trainable, "opt": tx.init(trainable)}
        if student_ema:
            state["ema"] = params
        if uses_fake:  # the fake score starts as the teacher
            state.update(fake=teacher_params, fake_opt=fake_tx.init(teacher_params))
        if gan:
            x, lab = task.sample(jax.random.key(0), 1)
            feats = bottleneck(net, teacher_params, x, jnp.ones(1),
                               *(() if lab is None else (lab,)))
            head = _jit_init(head_net, jax.random.key(sc.seed + 4), feats)
            state.update(head=head, head_opt=fake_tx.init(head))
        return state

    def gan_logits(fake_p, head_p, x0, labels, key):
        """The GAN head's real/fake logits ``[B]`` for ``x0`` noised at lognormal times."""
        k_t, k_z = jax.random.split(key)
        t = trigflow.sample_time(k_t, x0.shape[:1], p_mean=rc.p_mean, p_std=rc.p_std,
                                 sigma_d=sigma_d)
        x_t, _ = trigflow.noisy(x0, sigma_d * jax.random.normal(k_z, x0.shape), t)
        feats = bottleneck(net, fake_p, x_t / sigma_d, t, *(() if labels is None else (labels,)))
        return head_net.apply(head_p, feats)

    def sim_index_at(step: int) -> int:
        """Which of ``rcm.sim_steps`` backward simulation uses at ``step``: drawn on the host
        from (seed, step), so a resumed run draws the same, and each count is its own compiled
        program (a ``lax.switch`` around the network ran ~8x slower on XLA:CPU)."""
        if not rcm or len(sim_times) == 1:
            return 0
        return int(np.random.default_rng([sc.seed, step]).integers(len(sim_times)))

    def simulate(params, key, sim_index):
        """Student samples ``[B, ...]`` by backward simulation in ``rcm.sim_steps[sim_index]``
        steps (gradient through the last step) and their labels (uniform; None without
        classes)."""
        _, k_z, k_s, k_y = jax.random.split(key, 4)
        z = sigma_d * jax.random.normal(k_z, (rc.batch_size, *task.shape))
        labels = (jax.random.randint(k_y, (rc.batch_size,), 0, num_classes) if num_classes
                  else None)
        times = sim_times[sim_index]
        fn_sg = _velocity(net, jax.lax.stop_gradient(params), labels)
        x_t, t = z, times[0]
        for i, t_next in enumerate(times[1:]):
            x0 = samplers.consistency_sample(fn_sg, x_t, [t], jax.random.fold_in(k_s, i),
                                             sigma_d=sigma_d)
            noise = sigma_d * jax.random.normal(jax.random.fold_in(k_s, 100 + i), z.shape)
            x_t, t = jnp.cos(t_next) * x0 + jnp.sin(t_next) * noise, t_next
        return samplers.consistency_sample(_velocity(net, params, labels), x_t, [t], k_s,
                                           sigma_d=sigma_d), labels

    @functools.partial(jax.jit, static_argnums=(4,))
    def step(state, teacher_params, sigmas, pool, sim_index):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_x, k_l, k_sim, k_fake, k_dmd = jax.random.split(key, 5)
        x0, labels = task.sample(k_x, sc.batch_size)
        points = None
        if tbcm:
            idx = jax.random.randint(k_x, (sc.batch_size,), 0, pool[1].shape[0])
            points = (pool[0][idx], pool[1][idx])
            labels = pool[2][idx] if num_classes else None
        r = (jnp.minimum(1.0, state["step"].astype(jnp.float32) / sc.tangent_warmup)
             if sc.tangent_warmup else 1.0)
        teacher_p = jax.lax.stop_gradient(teacher_params)
        teacher = teacher_fn(teacher_p, labels) if distill else None
        extra, fake = {}, None
        if uses_fake:
            # The fake score learns the diffusion loss on the student's current samples.
            samples, sim_labels = simulate(state["params"]["F"], k_sim, sim_index)
            samples = jax.lax.stop_gradient(samples)
            fake_labels = sim_labels
            if snoopi:  # the fake's unconditional branch is trained too (label dropout)
                fake_labels = drop_labels(jax.random.fold_in(k_fake, 1001), sim_labels,
                                          config.teacher.cfg_dropout, num_classes)
            fake, fake_opt = state["fake"], state["fake_opt"]
            head, head_opt = (state["head"], state["head_opt"]) if gan else (None, None)
            if gan:
                real_x0, real_labels = task.sample(jax.random.fold_in(k_fake, 1002),
                                                   rc.batch_size)

            def fake_loss_fn(fh, i):
                fp, hp = fh
                k_i = jax.random.fold_in(k_fake, i)
                loss = jnp.mean(trigflow.diffusion_loss(
                    _velocity(net, fp, fake_labels), samples, k_i, sigma_d=sigma_d,
                    p_mean=rc.p_mean, p_std=rc.p_std))
                d_loss = jnp.zeros(())
                if gan:  # the classifier: noised real data (1) against student samples (0)
                    d_loss = dmd.gan_discriminator_loss(
                        gan_logits(fp, hp, real_x0, real_labels, jax.random.fold_in(k_i, 1)),
                        gan_logits(fp, hp, samples, sim_labels, jax.random.fold_in(k_i, 2)))
                return loss + rc.gan.disc_weight * d_loss, (loss, d_loss)

            for i in range(rc.fake_steps):
                (_, (f_loss, d_loss)), (g_fake, g_head) = jax.value_and_grad(
                    fake_loss_fn, has_aux=True)((fake, head), i)
                f_updates, fake_opt = fake_tx.update(g_fake, fake_opt, fake)
                fake = optax.apply_updates(fake, f_updates)
                if gan:
                    h_updates, head_opt = fake_tx.update(g_head, head_opt, head)
                    head = optax.apply_updates(head, h_updates)
            extra = {"fake_loss": f_loss, **({"gan_d": d_loss} if gan else {})}

        def loss_fn(p):
            loss, terms = jnp.zeros(()), {}
            if consistency:
                per, terms = scm.scm_loss(_velocity(net, p["F"], labels),
                                          lambda t: weight_net.apply(p["w"], t), x0, k_l,
                                          sigma_d=sigma_d, p_mean=sc.p_mean, p_std=sc.p_std, r=r,
                                          teacher=teacher, tangent_norm=sc.tangent_norm,
                                          points=points)
                loss = jnp.mean(per)
            if discrete:
                loss = jnp.mean(discrete_cm.discrete_cm_loss(
                    _velocity(net, p["F"], labels), x0, k_l, sigmas, sigma_d=sigma_d,
                    p_mean=dc.p_mean, p_std=dc.p_std, teacher=teacher))
            if rcm:
                gen, gen_labels = simulate(p["F"], k_sim, sim_index)  # as the fake score saw
                k_t, k_z = jax.random.split(k_dmd)
                t = trigflow.sample_time(k_t, gen.shape[:1], p_mean=rc.p_mean, p_std=rc.p_std,
                                         sigma_d=sigma_d)
                z_added = sigma_d * jax.random.normal(k_z, gen.shape)
                x_t, _ = trigflow.noisy(gen, z_added, t)
                x_t = jax.lax.stop_gradient(x_t)  # (DMD: the gradient enters through x0 only)
                fake_sg = jax.lax.stop_gradient(fake)
                if snoopi:  # SNOOPI: one random guidance scale for both scores this step
                    s = jax.random.uniform(jax.random.fold_in(k_dmd, 1), (),
                                           minval=rc.snoopi.scale_min, maxval=rc.snoopi.scale_max)
                    real = _cfg_velocity(net, teacher_p, gen_labels, s, num_classes)
                    fake_fn = (_cfg_velocity(net, fake_sg, gen_labels, s, num_classes)
                               if uses_fake else None)
                else:
                    real = teacher_fn(teacher_p, gen_labels)
                    fake_fn = _velocity(net, fake_sg, gen_labels) if uses_fake else None
                if config.method in ("sds", "vsd"):
                    z_real = dmd.noise_prediction(real(x_t / sigma_d, t), x_t, t, sigma_d)
                    z_ref = z_added if config.method == "sds" else dmd.noise_prediction(
                        fake_fn(x_t / sigma_d, t), x_t, t, sigma_d)
                    dmd_term = jnp.mean(dmd.surrogate_loss(gen, dmd.score_direction(
                        z_real, z_ref, t, sigma_d, rc.sds_weighting)))
                else:
                    f_real = trigflow.consistency_fn(real, x_t, t, sigma_d)
                    f_fake = trigflow.consistency_fn(fake_fn, x_t, t, sigma_d)
                    dmd_term = jnp.mean(dmd.dmd_loss(gen, f_real, f_fake))
                terms = {**terms, "dmd": dmd_term}
                loss = loss + (rc.weight if consistency else 1.0) * dmd_term
                if gan:  # non-saturating: the gradient reaches gen through its noised copy
                    g_loss = dmd.gan_generator_loss(gan_logits(
                        fake_sg, jax.lax.stop_gradient(head), gen, gen_labels,
                        jax.random.fold_in(k_dmd, 2)))
                    terms["gan_g"] = g_loss
                    loss = loss + rc.gan.gen_weight * g_loss
            return loss, terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        if student_ema:  # warm start: update k uses min(ema, (1 + k) / (10 + k))
            k = (state["step"] + 1).astype(jnp.float32)
            new["ema"] = ema_update(state["ema"], new["params"]["F"],
                                    jnp.minimum(student_ema, (1 + k) / (10 + k)))
        if uses_fake:
            new.update(fake=fake, fake_opt=fake_opt)
        if gan:
            new.update(head=head, head_opt=head_opt)
            extra["gan_g"] = terms["gan_g"]
        if rcm:
            extra["dmd"] = terms["dmd"]
        state, m = _guarded(state, new, loss, grads)
        if consistency:
            extra.update(tangent_warmup=jnp.float32(r),
                         g_norm=jnp.mean(jnp.sqrt(jnp.sum(jnp.square(terms["g"]).reshape(
                             terms["g"].shape[0], -1), axis=-1))),
                         w_mean=jnp.mean(terms["w"]))
        return state, {**m, **extra}

    meta = {**_model_meta(config, task),
            "distill": {"role": "student", "method": config.method,
                        "data": config.data.to_dict(), "sigma_d": sigma_d,
                        "teacher_sha256": ckpt_lib.params_hash(teacher_params),
                        "settings": _settings(sc, ("steps",)),
                        **({"guidance": config.guidance.to_dict()} if num_classes else {}),
                        **({"rcm": rc.to_dict()} if rcm else {}),
                        **({"discrete": dc.to_dict()} if discrete else {})},
            # A cosine schedule is shaped by the run's length: resuming checks it too.
            **({"lr_schedule": {"schedule": "cosine", "steps": sc.steps}}
               if sc.optimizer.get("schedule", "constant") == "cosine" else {})}
    state = _fit("student", directory, init_state,
                 lambda s: step(s, teacher_params, sigmas_at(int(s["step"])), pool,
                                sim_index_at(int(s["step"]))),
                 sc.steps, meta, writer, sc, progress)
    return jax.device_get(state["ema"] if student_ema else state["params"]["F"])


def progressive_grid(config, sigma_d: float, n: int) -> np.ndarray:
    """The ``n``-step time grid of progressive distillation: every ``start_steps / n``-th time
    of the teacher's ``start_steps`` Karras grid (so each round's grid nests in the last)."""
    start = config.progressive.start_steps
    return samplers.karras_times(start, sigma_d)[::start // n]


def _guidance_draw(config, key, n: int) -> jax.Array:
    """Guided distillation's per-example guidance scales, uniform on the trained range."""
    g = config.guided
    return jax.random.uniform(key, (n,), minval=g.scale_min, maxval=g.scale_max)


def train_guided(config, task, net, net_w, teacher_params, sigma_d: float, directory: str,
                 writer, progress: bool) -> dict:
    """Guided distillation's first stage (Meng et al. 2023): a student ``net_w`` that takes the
    guidance scale ``w`` as an input learns the teacher's guided velocity
    ``F_u + w (F_c - F_u)`` at ``w`` uniform on ``[scale_min, scale_max]`` (one network
    evaluation instead of two). Initialised from the teacher (its guidance layers at zero)."""
    g, sc, tc = config.guided, config.student, config.teacher
    tx = _adam(sc.optimizer, g.steps)

    def init_state():
        params = _init_params(net_w, task, sc.seed, guidance=True)
        params = _overlay(params, teacher_params)
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
            jax.random.key(sc.seed + 1)), "nonfinite": loop.init_nonfinite(),
            "params": params, "opt": tx.init(params)}

    @jax.jit
    def step(state, teacher_params):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_x, k_w, k_t, k_z = jax.random.split(key, 4)
        x0, labels = task.sample(k_x, sc.batch_size)
        w = _guidance_draw(config, k_w, sc.batch_size)
        t = trigflow.sample_time(k_t, (sc.batch_size,), p_mean=tc.p_mean, p_std=tc.p_std,
                                 sigma_d=sigma_d)
        x_t, _ = trigflow.noisy(x0, sigma_d * jax.random.normal(k_z, x0.shape), t)
        target = _cfg_velocity(net, jax.lax.stop_gradient(teacher_params), labels, w,
                               task.num_classes)(x_t / sigma_d, t)

        def loss_fn(p):
            err = net_w.apply(p, x_t / sigma_d, t, labels, w) - target
            return jnp.mean(jnp.square(err))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        return _guarded(state, new, loss, grads)

    meta = {**_model_meta(config, task, guidance=True),
            "distill": {"role": "guided", "data": config.data.to_dict(), "sigma_d": sigma_d,
                        "teacher_sha256": ckpt_lib.params_hash(teacher_params),
                        "settings": {**g.to_dict(), "student": _settings(sc, ("steps",))}}}
    state = _fit("student", directory, init_state, lambda s: step(s, teacher_params), g.steps,
                 meta, writer, sc, progress)
    return jax.device_get(state["params"])


def _overlay(params: dict, source: dict) -> dict:
    """``params`` with every leaf that ``source`` has at the same path taken from ``source``."""
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source)}
    return jax.tree_util.tree_map_with_path(lambda k, v: flat.get(jax.tree_util.keystr(k), v),
                                            params)


def train_progressive(config, task, net, teacher_params, sigma_d: float, directory: str,
                      writer, progress: bool, *, guided: bool = False) -> dict[int, dict]:
    """Progressive distillation from ``start_steps`` down to 1: ``{steps: params}`` of every
    round's student (the round that halves to ``n`` steps gives the ``n``-step model).

    With class labels the first round's teacher is the guided teacher at
    ``config.guidance.scale`` (later rounds: the last student, guidance folded in). ``guided``:
    ``net`` and ``teacher_params`` are guided distillation's w-conditioned model, and every
    round draws ``w`` per example on the trained range (the student keeps ``w`` as an input).
    """
    pc, sc = config.progressive, config.student
    tx = _adam(sc.optimizer, pc.steps_per_round)  # (a schedule restarts with each round)
    scale, num_classes = float(config.guidance.scale), task.num_classes
    models, teacher, n = {}, teacher_params, pc.start_steps
    while n > 1:
        n //= 2
        first = n == pc.start_steps // 2
        teacher_grid = jnp.asarray(progressive_grid(config, sigma_d, 2 * n))

        @jax.jit
        def step(state, teacher, teacher_grid=teacher_grid, n=n, first=first):
            key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
            k_x, k_i, k_z, k_w = jax.random.split(key, 4)
            x0, labels = task.sample(k_x, sc.batch_size)
            i = jax.random.randint(k_i, (sc.batch_size,), 0, n)  # the student's step i -> i+1
            t, t_mid, t_next = (teacher_grid[2 * i], teacher_grid[2 * i + 1],
                                teacher_grid[2 * i + 2])
            x_t, _ = trigflow.noisy(x0, sigma_d * jax.random.normal(k_z, x0.shape), t)
            teacher = jax.lax.stop_gradient(teacher)
            if guided:
                w = _guidance_draw(config, k_w, sc.batch_size)
                teacher_fn, student_fn = (_velocity(net, teacher, labels, w),
                                          lambda p: _velocity(net, p, labels, w))
            else:
                teacher_fn = (_cfg_velocity(net, teacher, labels, scale, num_classes) if first
                              else _velocity(net, teacher, labels))
                student_fn = lambda p: _velocity(net, p, labels)
            target = progressive.progressive_target(teacher_fn, x_t, t, t_mid, t_next, sigma_d)

            def loss_fn(p):
                x0_hat = trigflow.consistency_fn(student_fn(p), x_t, t, sigma_d)
                return jnp.mean(progressive.progressive_loss(x0_hat, target, x_t, t, sigma_d))

            loss, grads = jax.value_and_grad(loss_fn)(state["params"])
            updates, opt = tx.update(grads, state["opt"], state["params"])
            new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
                   "step": state["step"] + 1}
            return _guarded(state, new, loss, grads)

        def init_state(teacher=teacher):
            return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
                jax.random.key(sc.seed + n)), "nonfinite": loop.init_nonfinite(),
                "params": teacher, "opt": tx.init(teacher)}

        meta = {**_model_meta(config, task, guidance=guided),
                "distill": {"role": "progressive", "steps": n, "data": config.data.to_dict(),
                            "sigma_d": sigma_d, "teacher_sha256": ckpt_lib.params_hash(teacher),
                            "settings": {**pc.to_dict(), "student": _settings(sc, ("steps",))},
                            **({"guidance": config.guidance.to_dict()} if num_classes else {}),
                            **({"guided": config.guided.to_dict()} if guided else {})}}
        state = _fit("student", os.path.join(directory, f"round_{n}_steps"), init_state,
                     lambda s, step=step, teacher=teacher: step(s, teacher), pc.steps_per_round,
                     meta, writer, sc, progress)
        teacher = jax.device_get(state["params"])
        models[n] = teacher
    return models


def trajectory_points(teacher, z: jax.Array, grid: jax.Array, sigma_d: float
                      ) -> tuple[jax.Array, jax.Array]:
    """``(x [P * N, ...], t [P * N])``: the points of DDIM trajectories of the teacher from
    ``z [P, ...]`` at the grid's times ``t_0 .. t_{N-1}`` (every time but the final 0), time-
    major (point ``k`` comes from trajectory ``k mod P``)."""

    def step(x, pair):
        t, t_next = pair
        x_next = samplers.ode_sample(teacher, x, jnp.stack([t, t_next]), sigma_d=sigma_d,
                                     method="ddim")
        return x_next, x

    _, xs = jax.lax.scan(step, z, (grid[:-1], grid[1:]))
    ts = jnp.broadcast_to(grid[:-1, None], xs.shape[:2])
    return xs.reshape(-1, *z.shape[1:]), ts.reshape(-1)


# -------------------------------------------------------------------------------- evaluation
def evaluate(config, task, net, teacher_params, student_params, sigma_d: float, *,
             student_net=None, cache_dir: str | None = None
             ) -> tuple[dict[str, float], dict[str, np.ndarray], Any]:
    """Metrics of the teacher at each ODE step count (with guidance ``config.guidance.scale``)
    and of the student at each step count; the sample sets to plot (``data``, ``teacher_<n>``,
    ``student_<n>``, model units) and their requested labels (None without classes).

    ``cache_dir`` (the driver: ``<teacher dir>_eval_cache``, beside the teacher): the teacher's
    samples are kept there (``teacher_samples_<key>.npz``, the key a hash of the teacher's
    parameters and every setting that shapes the samples), so runs sharing a teacher sample it
    once (on digits, ~10 min of the 1-64 step sweep with guidance)."""
    e = config.eval
    key = jax.random.key(e.seed)
    z = sigma_d * jax.random.normal(jax.random.fold_in(key, 0), (e.num_samples, *task.shape))
    labels = task.eval_labels(e.num_samples)
    lab = None if labels is None else jnp.asarray(labels)
    scale = float(config.guidance.scale)
    results: dict[str, float] = {}
    sets = {"data": task.reference(jax.random.fold_in(key, 1), e.num_samples)}
    t0 = samplers.t_max(sigma_d)

    @functools.partial(jax.jit, static_argnums=(2,))
    def teacher_sample(params, times, method):
        return samplers.ode_sample(_cfg_velocity(net, params, lab, scale, task.num_classes), z,
                                   times, sigma_d=sigma_d, method=method)

    @jax.jit
    def progressive_sample(params, times):  # the round's n-step student, by DDIM on its grid
        if config.method == "guided":  # (scale inside the trained range: check_config)
            fn = _velocity(student_net, params, lab, jnp.full(z.shape[:1], scale))
        else:
            fn = _velocity(net, params, lab)
        return samplers.ode_sample(fn, z, times, sigma_d=sigma_d, method="ddim")

    def score(prefix, x, n):
        ref_key = jax.random.fold_in(key, 1000 + n)
        for name, value in task.evaluate(x, labels, ref_key).items():
            results[f"{prefix}/steps_{n}/{name}"] = float(value)

    teacher_sha = ckpt_lib.params_hash(teacher_params) if cache_dir else ""
    for n in e.teacher_steps:
        key_text = json.dumps({"teacher_sha256": teacher_sha, "steps": n, "seed": e.seed,
                               "num_samples": e.num_samples, "sampler": e.sampler,
                               "guidance": scale, "sigma_d": sigma_d,
                               "data": config.data.to_dict()}, sort_keys=True)
        path = cache_dir and os.path.join(cache_dir, "teacher_samples_" + hashlib.sha256(
            key_text.encode()).hexdigest()[:16] + ".npz")
        if path and os.path.exists(path):
            with np.load(path) as f:
                x = f["samples"]
        else:
            x = np.asarray(teacher_sample(teacher_params, jnp.asarray(samplers.karras_times(
                n, sigma_d)), e.sampler))
            if path:
                os.makedirs(cache_dir, exist_ok=True)
                report.write_npz_atomic(path, samples=x, key=np.asarray(key_text))
        score("teacher", x, n)
        sets[f"teacher_{n}"] = x
    for n in e.student_steps:
        if config.method in ("progressive", "guided"):
            times = jnp.asarray(progressive_grid(config, sigma_d, n))
            x = np.asarray(progressive_sample(student_params[n], times))
        else:
            times = [t0] + _intermediate_times(config, n)
            x = np.asarray(jax.jit(lambda p: samplers.consistency_sample(
                _velocity(net, p, lab), z, times, jax.random.fold_in(key, 2),
                sigma_d=sigma_d))(student_params))
        score("student", x, n)
        sets[f"student_{n}"] = x
    return results, sets, labels


# ------------------------------------------------------------------------------------ driver
def estimate_sigma_d(task, seed: int = 0) -> float:
    """The data's standard deviation (over all coordinates), from 10,000 samples, 3 decimals."""
    x, _ = task.sample(jax.random.key(seed), 10_000)
    return round(float(np.asarray(x).std()), 3)


def _build_net(config, task, guidance: bool = False):
    kwargs = config.model.kwargs.to_dict()
    if task.num_classes:
        kwargs["num_classes"] = task.num_classes
    if guidance:
        kwargs["guidance_input"] = True
    try:
        return DENOISERS[config.model.name](**kwargs)
    except TypeError as e:
        raise errors.ConfigError(f"config.model.kwargs: {e}") from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the experiment; returns (and writes to ``results.json``) the flat results."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    report.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    t_start = time.time()
    progress = config.progress

    # -- data and networks
    task = tasks.get(config.data.name, config.data.kwargs.to_dict(), config.data.data_dir or None)
    sigma_d = float(config.sigma_d) or estimate_sigma_d(task)
    net = _build_net(config, task)
    net_w = _build_net(config, task, guidance=True) if config.method == "guided" else None

    # -- teacher, then student
    writer = metrics.MetricWriter(workdir)
    with writer:
        teacher_dir = (os.path.abspath(config.teacher.dir) if config.teacher.dir
                       else os.path.join(workdir, "teacher"))
        t0 = time.time()
        teacher_params = train_teacher(config, task, net, sigma_d, teacher_dir, writer, progress)
        teacher_s = time.time() - t0
        t0 = time.time()
        student_dir = os.path.join(workdir, "checkpoints", "student")
        if config.method == "guided":
            w_params = train_guided(config, task, net, net_w, teacher_params, sigma_d,
                                    os.path.join(student_dir, "guided"), writer, progress)
            student_params = train_progressive(config, task, net_w, w_params, sigma_d,
                                               student_dir, writer, progress, guided=True)
        else:
            train_fn = train_progressive if config.method == "progressive" else train_student
            student_params = train_fn(config, task, net, teacher_params, sigma_d, student_dir,
                                      writer, progress)
        student_s = time.time() - t0

    # -- evaluation and outputs
    if task.num_classes:
        task = task.with_evaluator(config.eval.classifier_dir or
                                   os.path.join(workdir, "classifier"),
                                   steps=config.eval.classifier_steps)
    results, sets, labels = evaluate(config, task, net, teacher_params, student_params, sigma_d,
                                     student_net=net_w,
                                     cache_dir=teacher_dir.rstrip("/") + "_eval_cache")
    first = min(config.eval.student_steps)
    report.write_npz_atomic(os.path.join(workdir, "samples.npz"),
                            samples=task.to_stored(sets[f"student_{first}"]).astype(np.float32),
                            **({} if labels is None else {"labels": labels}))
    title = f"{method_label(config)} on {config.data.name}"
    if task.num_classes:
        title += f" (guidance scale {config.guidance.scale:g})"
        viz.image_grid(os.path.join(workdir, "samples.png"),
                       {k: task.to_stored(v) for k, v in sets.items()}, labels,
                       vmax=16.0, title=title)
    else:
        viz.scatter_grid(os.path.join(workdir, "samples.png"), sets, title=title)
    records = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    for role in ("teacher", "student"):
        curve = metrics.series(records, f"{role}/train/loss")
        if curve:
            report.plot_curves(os.path.join(workdir, f"{role}_curves.png"), {"loss": curve},
                               title=f"{role} on {config.data.name}", ylabel="loss")
            results[f"{role}/final_loss"] = float(curve[-1][1])
    results.update({"sigma_d": sigma_d, "teacher/wall_time_s": teacher_s,
                    "student/wall_time_s": student_s, "wall_time_s": time.time() - t_start})
    if task.num_classes and hasattr(task.evaluator, "real_test_fd"):
        results["real_test/fd"] = float(task.evaluator.real_test_fd())
    report.write_results(os.path.join(workdir, "results.json"), results)
    rows = [{"model": role, "steps": n,
             **{m: results[f"{role}/steps_{n}/{m}"] for m in task.metric_names}}
            for role, steps in (("teacher", config.eval.teacher_steps),
                                ("student", config.eval.student_steps)) for n in steps]
    lower = "fd" if task.num_classes else "swd/mmd"
    print(report.format_table(rows, title=f"{title} ({config.eval.num_samples} samples; "
                              f"{lower}: lower is better)"), flush=True)
    return results
