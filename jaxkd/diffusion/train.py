"""``train_and_evaluate(config, workdir)``: a diffusion teacher, a few-step student, and both
evaluated on toy 2-D data with known densities.

Sections: data -> teacher (trained when missing, reused when its settings match) -> student
(sCD: consistency distillation along the teacher's ODE; sCT: consistency training along the
data's; rCM: sCD plus DMD on the student's own samples, with a fake score; DMD2: the
distribution-matching term alone, fake score updated several times per student step; SDS/VSD:
score distillation on the student as a generator (VSD with the fake score); CD/CT:
discrete-time consistency distillation/training with iCT's improvements; progressive:
students of halving step counts, each matching two steps of the last) -> evaluation (teacher at 1..64 ODE steps, student at 1, 2, 4 consistency steps) ->
outputs:

- ``results.json``: ``teacher/steps_<n>/<metric>`` and ``student/steps_<n>/<metric>`` with
  metrics ``swd``, ``mmd``, ``logdensity``, ``mode_coverage`` (jaxkd.diffusion.metrics), and
  the training losses, ``sigma_d``, wall times.
- ``samples.npz``: ``samples`` ``[10000, 2]``, the student's one-step samples.
- ``samples.png`` (scatter plots: data, teacher and student at several step counts),
  ``teacher_curves.png`` / ``student_curves.png``, ``metrics.jsonl``, TensorBoard events,
  Orbax checkpoints of both runs (each resumes after an interruption), a results table.
"""

from __future__ import annotations

import functools
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
from jaxkd.diffusion import metrics as metrics_lib
from jaxkd.diffusion import discrete_cm, dmd, progressive, samplers, scm, toy, trigflow, viz
from jaxkd.models.denoisers import AdaptiveWeight, MLPDenoiser

__all__ = ["METHODS", "check_config", "train_and_evaluate"]

METHODS = ("scd", "sct", "rcm", "dmd2", "sds", "vsd", "cd", "ct", "progressive")
DENOISERS = {"mlp": MLPDenoiser}
# Settings that do not change what a run computes (a run may resume, or be extended with more
# ``steps``, under other values).
_LOOP_KEYS = ("log_every", "checkpoint_every", "on_nonfinite")
_TABLE_METRICS = ("swd", "mmd", "logdensity", "mode_coverage", "off_mode")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` naming the key for a config that cannot work."""
    if config.method not in METHODS:
        raise errors.ConfigError(f"config.method={config.method!r}; valid: {', '.join(METHODS)}")
    if config.data.name not in toy.DISTRIBUTIONS:
        raise errors.ConfigError(f"config.data.name={config.data.name!r}; valid: "
                                 f"{', '.join(sorted(toy.DISTRIBUTIONS))}")
    if config.model.name not in DENOISERS:
        raise errors.ConfigError(f"config.model.name={config.model.name!r}; valid: "
                                 f"{', '.join(DENOISERS)}")
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
        if config.rcm.fake_steps < 1 or config.rcm.weight < 0:
            raise errors.ConfigError(f"config.rcm.fake_steps={config.rcm.fake_steps} must be >= 1 "
                                     f"and config.rcm.weight={config.rcm.weight} >= 0")
    if config.method == "progressive":
        start = config.progressive.start_steps
        if start < 2 or start & (start - 1):
            raise errors.ConfigError(f"config.progressive.start_steps={start} must be a power "
                                     "of two >= 2 (each round halves the steps)")
        bad = [n for n in config.eval.student_steps if n > start // 2 or n & (n - 1)]
        if bad:
            raise errors.ConfigError(
                f"config.eval.student_steps has {bad}: progressive distillation makes students "
                f"of 1, 2, 4, ... {start // 2} steps")
    if s.tbcm.enabled and config.method != "scd":
        raise errors.ConfigError(f"config.student.tbcm.enabled=True trains sCD on the teacher's "
                                 f"trajectories; config.method={config.method!r} (use scd)")
    if s.tangent_warmup < 0 or s.tangent_norm < 0:
        raise errors.ConfigError(f"config.student.tangent_warmup={s.tangent_warmup} and "
                                 f"tangent_norm={s.tangent_norm} must be >= 0")


def _intermediate_times(config: ml_collections.ConfigDict, n: int) -> list[float]:
    """The times of consistency steps 2..n (``config.eval.student_times['<n>']``)."""
    return [float(t) for t in config.eval.student_times.get(str(n), ())]


# ---------------------------------------------------------------------------------- training
def _adam(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    tx = optax.adam(cfg.lr, b1=0.9, b2=cfg.b2)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx


def _fit(name: str, directory: str, init_state, step, total: int, meta: dict, writer,
         cfg: ml_collections.ConfigDict, progress: bool):
    """Runs ``step`` for ``total`` steps under the shared loop (resume, SIGTERM, metrics)."""
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=2, async_save=False)
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


def train_teacher(config, dist, net, sigma_d: float, directory: str, writer,
                  progress: bool) -> dict:
    """The diffusion teacher's (EMA) parameters, trained or restored from ``directory``."""
    tc = config.teacher
    tx = _adam(tc.optimizer)
    x_init = jnp.zeros((1, 2))

    def init_state():
        params = net.init(jax.random.key(tc.seed), x_init, jnp.ones(1))
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
            jax.random.key(tc.seed + 1)), "nonfinite": loop.init_nonfinite(),
            "params": params, "ema": params, "opt": tx.init(params)}

    @jax.jit
    def step(state):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_x, k_l = jax.random.split(key)
        x0 = dist.sample(k_x, tc.batch_size)

        def loss_fn(params):
            fn = lambda x, t: net.apply(params, x, t)
            return jnp.mean(trigflow.diffusion_loss(fn, x0, k_l, sigma_d=sigma_d,
                                                    p_mean=tc.p_mean, p_std=tc.p_std))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, p: tc.ema * e + (1 - tc.ema) * p, state["ema"], params)
        new = {**state, "params": params, "ema": ema, "opt": opt, "step": state["step"] + 1}
        return _guarded(state, new, loss, grads)

    meta = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
            "distill": {"role": "teacher", "data": config.data.to_dict(), "sigma_d": sigma_d,
                        "settings": {k: v for k, v in tc.to_dict().items()
                                     if k not in ("dir", "steps", *_LOOP_KEYS)}}}
    state = _fit("teacher", directory, init_state, step, tc.steps, meta, writer, tc, progress)
    return jax.device_get(state["ema"])


def train_student(config, dist, net, teacher_params, sigma_d: float, directory: str, writer,
                  progress: bool) -> dict:
    """The few-step student by sCD (``config.method == "scd"``), sCT, or rCM (sCD plus the
    DMD regulariser on the student's own samples, with a fake score trained alongside)."""
    sc = config.student
    weight_net = AdaptiveWeight(emb_dim=sc.weight_emb_dim)
    tx = _adam(sc.optimizer)
    distill = config.method in ("scd", "rcm", "dmd2", "cd", "sds", "vsd")
    discrete = config.method in ("cd", "ct")  # discrete-time consistency (iCT's improvements)
    dc = config.discrete

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
    # from the seed (so a resumed run has the same pool).
    tbcm = sc.tbcm.enabled
    pool = None
    if tbcm:
        grid = jnp.asarray(samplers.karras_times(sc.tbcm.grid_steps, sigma_d))
        z_pool = sigma_d * jax.random.normal(jax.random.key(sc.seed + 3),
                                             (sc.tbcm.num_trajectories, 2))
        pool = jax.jit(lambda tp: trajectory_points(_velocity(net, tp), z_pool, grid,
                                                    sigma_d))(teacher_params)

    def init_state():
        params = (teacher_params if sc.init == "teacher"
                  else net.init(jax.random.key(sc.seed), jnp.zeros((1, 2)), jnp.ones(1)))
        trainable = {"F": params, "w": weight_net.init(jax.random.key(sc.seed + 2), jnp.ones(1))}
        state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(
            jax.random.key(sc.seed + 1)), "nonfinite": loop.init_nonfinite(),
            "params": trainable, "opt": tx.init(trainable)}
        if uses_fake:  # the fake score starts as the teacher
            state.update(fake=teacher_params, fake_opt=fake_tx.init(teacher_params))
        return state

    def simulate(params, key):
        """Student samples ``[B, 2]`` by backward simulation (gradient through the last step)."""
        k_n, k_z, k_s = jax.random.split(key, 3)
        z = sigma_d * jax.random.normal(k_z, (rc.batch_size, 2))

        def branch(times):
            def run(p):
                fn_sg = _velocity(net, jax.lax.stop_gradient(p))
                x_t, t = z, times[0]
                for i, t_next in enumerate(times[1:]):
                    x0 = samplers.consistency_sample(fn_sg, x_t, [t], jax.random.fold_in(k_s, i),
                                                     sigma_d=sigma_d)
                    noise = sigma_d * jax.random.normal(jax.random.fold_in(k_s, 100 + i), z.shape)
                    x_t, t = jnp.cos(t_next) * x0 + jnp.sin(t_next) * noise, t_next
                return samplers.consistency_sample(_velocity(net, p), x_t, [t], k_s,
                                                   sigma_d=sigma_d)
            return run

        n = jax.random.randint(k_n, (), 0, len(sim_times))
        return jax.lax.switch(n, [branch(times) for times in sim_times], params)

    @jax.jit
    def step(state, teacher_params, sigmas, pool):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_x, k_l, k_sim, k_fake, k_dmd = jax.random.split(key, 5)
        x0 = dist.sample(k_x, sc.batch_size)
        points = None
        if tbcm:
            idx = jax.random.randint(k_x, (sc.batch_size,), 0, pool[1].shape[0])
            points = (pool[0][idx], pool[1][idx])
        r = (jnp.minimum(1.0, state["step"].astype(jnp.float32) / sc.tangent_warmup)
             if sc.tangent_warmup else 1.0)
        teacher_p = jax.lax.stop_gradient(teacher_params)
        teacher = _velocity(net, teacher_p) if distill else None
        extra, fake = {}, None
        if uses_fake:
            # The fake score learns the diffusion loss on the student's current samples.
            samples = jax.lax.stop_gradient(simulate(state["params"]["F"], k_sim))
            fake, fake_opt = state["fake"], state["fake_opt"]
            for i in range(rc.fake_steps):
                f_loss, f_grads = jax.value_and_grad(lambda fp: jnp.mean(trigflow.diffusion_loss(
                    _velocity(net, fp), samples, jax.random.fold_in(k_fake, i),
                    sigma_d=sigma_d, p_mean=rc.p_mean, p_std=rc.p_std)))(fake)
                f_updates, fake_opt = fake_tx.update(f_grads, fake_opt, fake)
                fake = optax.apply_updates(fake, f_updates)
            extra = {"fake_loss": f_loss}

        def loss_fn(p):
            loss, terms = jnp.zeros(()), {}
            if consistency:
                per, terms = scm.scm_loss(lambda x, t: net.apply(p["F"], x, t),
                                          lambda t: weight_net.apply(p["w"], t), x0, k_l,
                                          sigma_d=sigma_d, p_mean=sc.p_mean, p_std=sc.p_std, r=r,
                                          teacher=teacher, tangent_norm=sc.tangent_norm,
                                          points=points)
                loss = jnp.mean(per)
            if discrete:
                loss = jnp.mean(discrete_cm.discrete_cm_loss(
                    lambda x, t: net.apply(p["F"], x, t), x0, k_l, sigmas, sigma_d=sigma_d,
                    p_mean=dc.p_mean, p_std=dc.p_std, teacher=teacher))
            if rcm:
                gen = simulate(p["F"], k_sim)  # the same draws as the fake score saw
                k_t, k_z = jax.random.split(k_dmd)
                t = trigflow.sample_time(k_t, gen.shape[:1], p_mean=rc.p_mean, p_std=rc.p_std,
                                         sigma_d=sigma_d)
                z_added = sigma_d * jax.random.normal(k_z, gen.shape)
                x_t, _ = trigflow.noisy(gen, z_added, t)
                x_t = jax.lax.stop_gradient(x_t)  # (DMD: the gradient enters through x0 only)
                if config.method in ("sds", "vsd"):
                    z_real = dmd.noise_prediction(teacher(x_t / sigma_d, t), x_t, t, sigma_d)
                    z_ref = z_added if config.method == "sds" else dmd.noise_prediction(
                        net.apply(jax.lax.stop_gradient(fake), x_t / sigma_d, t), x_t, t,
                        sigma_d)
                    dmd_term = jnp.mean(dmd.surrogate_loss(gen, dmd.score_direction(
                        z_real, z_ref, t, sigma_d, rc.sds_weighting)))
                else:
                    f_real = trigflow.consistency_fn(teacher, x_t, t, sigma_d)
                    f_fake = trigflow.consistency_fn(_velocity(net, jax.lax.stop_gradient(fake)),
                                                     x_t, t, sigma_d)
                    dmd_term = jnp.mean(dmd.dmd_loss(gen, f_real, f_fake))
                terms = {**terms, "dmd": dmd_term}
                loss = loss + (rc.weight if consistency else 1.0) * dmd_term
            return loss, terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        if uses_fake:
            new.update(fake=fake, fake_opt=fake_opt)
        if rcm:
            extra["dmd"] = terms["dmd"]
        state, m = _guarded(state, new, loss, grads)
        if consistency:
            extra.update(tangent_warmup=jnp.float32(r),
                         g_norm=jnp.mean(jnp.linalg.norm(terms["g"], axis=-1)),
                         w_mean=jnp.mean(terms["w"]))
        return state, {**m, **extra}

    meta = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
            "distill": {"role": "student", "method": config.method,
                        "data": config.data.to_dict(), "sigma_d": sigma_d,
                        "teacher_sha256": ckpt_lib.params_hash(teacher_params),
                        "settings": {k: v for k, v in sc.to_dict().items()
                                     if k not in ("steps", *_LOOP_KEYS)},
                        **({"rcm": rc.to_dict()} if rcm else {}),
                        **({"discrete": dc.to_dict()} if discrete else {})}}
    state = _fit("student", directory, init_state,
                 lambda s: step(s, teacher_params, sigmas_at(int(s["step"])), pool),
                 sc.steps, meta, writer, sc, progress)
    return jax.device_get(state["params"]["F"])


def progressive_grid(config, sigma_d: float, n: int) -> np.ndarray:
    """The ``n``-step time grid of progressive distillation: every ``start_steps / n``-th time
    of the teacher's ``start_steps`` Karras grid (so each round's grid nests in the last)."""
    start = config.progressive.start_steps
    return samplers.karras_times(start, sigma_d)[::start // n]


def train_progressive(config, dist, net, teacher_params, sigma_d: float, directory: str,
                      writer, progress: bool) -> dict[int, dict]:
    """Progressive distillation from ``start_steps`` down to 1: ``{steps: params}`` of every
    round's student (the round that halves to ``n`` steps gives the ``n``-step model)."""
    pc, sc = config.progressive, config.student
    tx = _adam(sc.optimizer)
    models, teacher, n = {}, teacher_params, pc.start_steps
    while n > 1:
        n //= 2
        teacher_grid = jnp.asarray(progressive_grid(config, sigma_d, 2 * n))

        @jax.jit
        def step(state, teacher, teacher_grid=teacher_grid, n=n):
            key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
            k_x, k_i, k_z = jax.random.split(key, 3)
            x0 = dist.sample(k_x, sc.batch_size)
            i = jax.random.randint(k_i, (sc.batch_size,), 0, n)  # the student's step i -> i+1
            t, t_mid, t_next = (teacher_grid[2 * i], teacher_grid[2 * i + 1],
                                teacher_grid[2 * i + 2])
            x_t, _ = trigflow.noisy(x0, sigma_d * jax.random.normal(k_z, x0.shape), t)
            target = progressive.progressive_target(
                _velocity(net, jax.lax.stop_gradient(teacher)), x_t, t, t_mid, t_next, sigma_d)

            def loss_fn(p):
                x0_hat = trigflow.consistency_fn(_velocity(net, p), x_t, t, sigma_d)
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

        meta = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
                "distill": {"role": "progressive", "steps": n, "data": config.data.to_dict(),
                            "sigma_d": sigma_d, "teacher_sha256": ckpt_lib.params_hash(teacher),
                            "settings": {**pc.to_dict(), "student": {
                                k: v for k, v in sc.to_dict().items()
                                if k not in ("steps", *_LOOP_KEYS)}}}}
        state = _fit("student", os.path.join(directory, f"round_{n}_steps"), init_state,
                     lambda s, step=step, teacher=teacher: step(s, teacher), pc.steps_per_round,
                     meta, writer, sc, progress)
        teacher = jax.device_get(state["params"])
        models[n] = teacher
    return models


def trajectory_points(teacher, z: jax.Array, grid: jax.Array, sigma_d: float
                      ) -> tuple[jax.Array, jax.Array]:
    """``(x [P * N, ...], t [P * N])``: the points of DDIM trajectories of the teacher from
    ``z [P, ...]`` at the grid's times ``t_0 .. t_{N-1}`` (every time but the final 0)."""

    def step(x, pair):
        t, t_next = pair
        x_next = samplers.ode_sample(teacher, x, jnp.stack([t, t_next]), sigma_d=sigma_d,
                                     method="ddim")
        return x_next, x

    _, xs = jax.lax.scan(step, z, (grid[:-1], grid[1:]))
    ts = jnp.broadcast_to(grid[:-1, None], xs.shape[:2])
    return xs.reshape(-1, *z.shape[1:]), ts.reshape(-1)


# -------------------------------------------------------------------------------- evaluation
def _velocity(net, params):
    return lambda x, t: net.apply(params, x, t)


def evaluate(config, dist, net, teacher_params, student_params, sigma_d: float
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of the teacher at each ODE step count and of the student at each step count,
    and the sample sets to plot (``data``, ``teacher_<n>``, ``student_<n>``)."""
    e = config.eval
    key = jax.random.key(e.seed)
    z = sigma_d * jax.random.normal(jax.random.fold_in(key, 0), (e.num_samples, 2))
    results: dict[str, float] = {}
    sets = {"data": np.asarray(dist.sample(jax.random.fold_in(key, 1), e.num_samples))}
    t0 = samplers.t_max(sigma_d)

    @functools.partial(jax.jit, static_argnums=(2,))
    def teacher_sample(params, times, method):
        return samplers.ode_sample(_velocity(net, params), z, times, sigma_d=sigma_d,
                                   method=method)

    def score(prefix, x, n):
        ref_key = jax.random.fold_in(key, 1000 + n)
        for name, value in metrics_lib.evaluate_samples(x, dist, ref_key,
                                                        reference_n=e.num_samples).items():
            results[f"{prefix}/steps_{n}/{name}"] = float(value)

    for n in e.teacher_steps:
        x = np.asarray(teacher_sample(teacher_params, jnp.asarray(samplers.karras_times(
            n, sigma_d)), e.sampler))
        score("teacher", x, n)
        sets[f"teacher_{n}"] = x
    for n in e.student_steps:
        if config.method == "progressive":  # the round's n-step student, by DDIM on its grid
            times = jnp.asarray(progressive_grid(config, sigma_d, n))
            x = np.asarray(teacher_sample(student_params[n], times, "ddim"))
        else:
            times = [t0] + _intermediate_times(config, n)
            x = np.asarray(jax.jit(lambda p: samplers.consistency_sample(
                _velocity(net, p), z, times, jax.random.fold_in(key, 2), sigma_d=sigma_d))(
                    student_params))
        score("student", x, n)
        sets[f"student_{n}"] = x
    return results, sets


# ------------------------------------------------------------------------------------ driver
def estimate_sigma_d(dist, seed: int = 0) -> float:
    """The data's standard deviation (over all coordinates), from 10,000 samples, 3 decimals."""
    x = np.asarray(dist.sample(jax.random.key(seed), 10_000))
    return round(float(x.std()), 3)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the experiment; returns (and writes to ``results.json``) the flat results."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    report.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    t_start = time.time()
    progress = config.progress

    # -- data and networks
    dist = toy.get(config.data.name, **config.data.kwargs.to_dict())
    sigma_d = float(config.sigma_d) or estimate_sigma_d(dist)
    net = DENOISERS[config.model.name](**config.model.kwargs.to_dict())

    # -- teacher, then student
    writer = metrics.MetricWriter(workdir)
    with writer:
        teacher_dir = (os.path.abspath(config.teacher.dir) if config.teacher.dir
                       else os.path.join(workdir, "teacher"))
        t0 = time.time()
        teacher_params = train_teacher(config, dist, net, sigma_d, teacher_dir, writer, progress)
        teacher_s = time.time() - t0
        t0 = time.time()
        train_fn = train_progressive if config.method == "progressive" else train_student
        student_params = train_fn(config, dist, net, teacher_params, sigma_d,
                                  os.path.join(workdir, "checkpoints", "student"), writer,
                                  progress)
        student_s = time.time() - t0

    # -- evaluation and outputs
    results, sets = evaluate(config, dist, net, teacher_params, student_params, sigma_d)
    first = min(config.eval.student_steps)
    report.write_npz_atomic(os.path.join(workdir, "samples.npz"),
                            samples=sets[f"student_{first}"].astype(np.float32))
    viz.scatter_grid(os.path.join(workdir, "samples.png"), sets,
                     title=f"{config.method} on {config.data.name}")
    records = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    for role in ("teacher", "student"):
        curve = metrics.series(records, f"{role}/train/loss")
        if curve:
            report.plot_curves(os.path.join(workdir, f"{role}_curves.png"), {"loss": curve},
                               title=f"{role} on {config.data.name}", ylabel="loss")
            results[f"{role}/final_loss"] = float(curve[-1][1])
    results.update({"sigma_d": sigma_d, "teacher/wall_time_s": teacher_s,
                    "student/wall_time_s": student_s, "wall_time_s": time.time() - t_start})
    report.write_results(os.path.join(workdir, "results.json"), results)
    rows = [{"model": role, "steps": n,
             **{m: results[f"{role}/steps_{n}/{m}"] for m in _TABLE_METRICS}}
            for role, steps in (("teacher", config.eval.teacher_steps),
                                ("student", config.eval.student_steps)) for n in steps]
    print(report.format_table(rows, title=f"{config.method} on {config.data.name} "
                              f"({config.eval.num_samples} samples; swd/mmd: lower is better)"),
          flush=True)
    return results
