"""End-to-end cost of a KD step from a teacher-output cache, relative to a plain CE step.

    python benchmarks/cache_step.py [--batch 128 --num-samples 4 --steps 20 --rounds 5]
    python benchmarks/cache_step.py --smoke      # tiny models, seconds (tests/test_benchmarks.py)

On sklearn_digits (crop + flip augmentation), a ConvNet teacher is trained briefly with plain CE
(``--teacher-steps``), then cached (:func:`jaxkd.kd.cache.build_cache`) with ``--num-samples``
augmentations per example at ``top_k = 10`` (all classes, exact) and ``top_k = 5``. A smaller
ConvNet student is then timed per step, *including producing the batch on the host*
(``next(pipeline)`` + ``to_global_batch`` + the jitted step), for:

* ``ce``: plain cross-entropy, batches from :func:`jaxkd.data.make_pipeline`;
* ``live``: Hinton KD with the live teacher's forward pass, same pipeline;
* ``cached_k10`` / ``cached_k5``: Hinton KD with :func:`jaxkd.kd.cache.cached_teacher`, batches
  from :func:`jaxkd.kd.cache.make_cache_pipeline`.

Rounds are interleaved (ce, live, cached, ce, ...) and the ratio of median step times is
reported (``benchmarks/timing.py``); short rounds (``--steps 5``), many of them, keep the
median steady on a shared machine. To show where the time goes, the same rounds also time the
jitted CE and cached steps on a fixed batch (``*_step_only``) and the host batches alone
(``*_batch_only``: ``next(pipeline)`` + ``to_global_batch``). Also printed: the cache's disk bytes per example and per
sample (all files, headers and manifest included), build time, and the storage error of a
float16 cache (max probability error vs. float32) and the top-5 approximation (relative Hinton
KD loss error vs. the exact k = 10 cache, on the same batches). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402  (benchmarks/timing.py)

from jaxkd import data as data_lib
from jaxkd import losses, models
from jaxkd.core import checkpoint, optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import cache as cache_lib
from jaxkd.kd import steps as steps_lib


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="convnet")
    p.add_argument("--teacher-kwargs", default='{"width": 64, "depth": 2, "norm": "batch"}')
    p.add_argument("--student", default="convnet")
    p.add_argument("--student-kwargs", default='{"width": 16, "depth": 2, "norm": "batch"}')
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=200, help="CE steps before caching")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--data-dir", default=None, help="where sklearn_digits is prepared")
    p.add_argument("--smoke", action="store_true",
                   help="tiny MLPs, 2 samples, a few steps: checks that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.teacher, args.teacher_kwargs = "mlp", '{"hidden": [32]}'
        args.student, args.student_kwargs = "mlp", '{"hidden": [8]}'
        args.batch, args.num_samples, args.teacher_steps = 32, 2, 5
        args.steps, args.rounds = 2, 1
    return args


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main(argv=None) -> dict:
    args = _parse(argv)
    mesh = sharding.make_mesh(-1, 1)
    src = data_lib.load("sklearn_digits", "train", data_dir=args.data_dir)
    n, c = len(src), src.info.num_classes
    augment = data_lib.AugmentConfig(random_crop_padding=1, random_flip=True)
    shape = tuple(src.info.shape)
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.05, schedule="constant",
                                         warmup_steps=0, momentum=0.9, nesterov=False,
                                         weight_decay=5e-4, grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10_000)
    to_global = lambda b: sharding.to_global_batch(b, mesh)

    def pipeline(seed):
        return data_lib.make_pipeline(src, global_batch_size=args.batch, seed=seed, train=True,
                                      augment=augment)

    # Teacher: a short CE run, then its eval-mode variables.
    t_model = models.build(args.teacher, num_classes=c, **json.loads(args.teacher_kwargs))
    t_build, _, t_sh = state_lib.create_sharded(
        state_lib.make_init_fn(t_model, tx, shape, ema=False), jax.random.PRNGKey(1), mesh,
        "replicated")
    t_step = steps_lib.make_train_step(t_model, tx, mesh=mesh, state_shardings=t_sh)
    t_state, p = t_build(), pipeline(1)
    for _ in range(args.teacher_steps):
        t_state, _ = t_step(t_state, to_global(next(p)))
    t_vars = {"params": t_state["params"]}
    t_var_sh = {"params": t_sh["params"]}
    if t_state["batch_stats"]:
        t_vars["batch_stats"], t_var_sh["batch_stats"] = t_state["batch_stats"], t_sh["batch_stats"]
    live = steps_lib.Teacher.live(t_model, t_vars, t_var_sh)
    sha = checkpoint.params_hash(t_vars)

    # Caches.
    root = tempfile.mkdtemp(prefix="jaxkd_cache_bench_")
    caches, build_s, disk = {}, {}, {}
    for name, k, dtype in (("k10", c, "float32"), ("k5", 5, "float32"),
                           ("k10_f16", c, "float16")):
        path = os.path.join(root, name)
        t0 = time.perf_counter()
        cache_lib.build_cache(path, teacher=live, source=src, augment=augment,
                              num_samples=args.num_samples, top_k=k, seed=0,
                              batch_size=max(args.batch, 256 // args.batch * args.batch),
                              mesh=mesh, teacher_sha256=sha, dtype=dtype, progress=False)
        build_s[name] = time.perf_counter() - t0
        caches[name] = cache_lib.load_cache(path, source=src, teacher_sha256=sha,
                                            num_classes=c)
        disk[name] = _disk_bytes(path)

    # Storage and approximation errors, on the same replayed batches.
    full = jax.jit(cache_lib.topk_to_logits, static_argnums=3)
    p32 = cache_lib.make_cache_pipeline(caches["k10"], src, global_batch_size=args.batch, seed=0)
    p16 = cache_lib.make_cache_pipeline(caches["k10_f16"], src, global_batch_size=args.batch,
                                        seed=0)
    p5 = cache_lib.make_cache_pipeline(caches["k5"], src, global_batch_size=args.batch, seed=0)
    s_model = models.build(args.student, num_classes=c, **json.loads(args.student_kwargs))
    s_vars = state_lib.init_variables(s_model, jax.random.PRNGKey(2), shape)
    kd = jax.jit(lambda s, t: losses.hinton_kd_loss(s, t, temperature=args.temperature))
    prob_err, kd_err = 0.0, []
    for step in range(4):
        b32, b16, b5 = p32.batch_at(step), p16.batch_at(step), p5.batch_at(step)
        t32 = np.exp(np.asarray(full(b32["teacher_topk_logits"], b32["teacher_topk_index"],
                                     b32["teacher_lse"], c)))
        t16 = np.exp(np.asarray(full(b16["teacher_topk_logits"], b16["teacher_topk_index"],
                                     b16["teacher_lse"], c)))
        prob_err = max(prob_err, float(np.abs(t32 - t16).max()))
        s_logits = s_model.apply(s_vars, b32["image"], train=False)
        exact = float(kd(s_logits, np.log(t32)))
        approx = float(kd(s_logits, full(b5["teacher_topk_logits"], b5["teacher_topk_index"],
                                         b5["teacher_lse"], c)))
        kd_err.append(abs(approx - exact) / exact)

    # Timed steps: host batch production included.
    s_build, _, s_sh = state_lib.create_sharded(
        state_lib.make_init_fn(s_model, tx, shape, ema=False), jax.random.PRNGKey(0), mesh,
        "replicated")
    distill = steps_lib.DistillConfig("hinton", 0.9, args.temperature)

    def run(teacher, pipe):
        step = steps_lib.make_train_step(s_model, tx, mesh=mesh, state_shardings=s_sh,
                                         teacher=teacher, distill=distill)
        return s_build, (lambda s, _: step(s, to_global(next(pipe)))), None

    cached = cache_lib.cached_teacher(c)
    mk = lambda name: cache_lib.make_cache_pipeline(caches[name], src,
                                                    global_batch_size=args.batch, seed=0)
    runs = {"ce": run(None, pipeline(0)), "live": run(live, pipeline(0)),
            "cached_k10": run(cached, mk("k10")), "cached_k5": run(cached, mk("k5"))}
    # Where the time goes: the jitted steps on a fixed batch, and the host batches alone.
    fixed, fixed_cached = to_global(pipeline(0).batch_at(0)), to_global(mk("k10").batch_at(0))
    step_ce = steps_lib.make_train_step(s_model, tx, mesh=mesh, state_shardings=s_sh)
    step_cached = steps_lib.make_train_step(s_model, tx, mesh=mesh, state_shardings=s_sh,
                                            teacher=cached, distill=distill)
    runs["ce_step_only"] = (s_build, step_ce, fixed)
    runs["cached_step_only"] = (s_build, step_cached, fixed_cached)
    for name, pipe in (("ce_batch_only", pipeline(0)), ("cached_batch_only", mk("k10"))):
        runs[name] = (lambda: None, (lambda p: lambda s, _: (s, to_global(next(p))))(pipe), None)
    med = timing.median_step_times(runs, steps=args.steps, rounds=args.rounds)

    out = {
        "cached_over_ce": med["cached_k10"] / med["ce"],
        "cached_k5_over_ce": med["cached_k5"] / med["ce"],
        "live_over_ce": med["live"] / med["ce"],
        "ce_step_ms": 1e3 * med["ce"],
        "step_only_cached_over_ce": med["cached_step_only"] / med["ce_step_only"],
        "batch_only_ms_ce": 1e3 * med["ce_batch_only"],
        "batch_only_ms_cached": 1e3 * med["cached_batch_only"],
        "bytes_per_example": disk["k10"] / n,
        "bytes_per_sample": disk["k10"] / (n * args.num_samples),
        "bytes_per_example_k5": disk["k5"] / n,
        "bytes_per_example_k10_f16": disk["k10_f16"] / n,
        "payload_bytes_per_sample": caches["k10"].manifest["bytes_per_sample"],
        "build_s_k10": build_s["k10"],
        "f16_max_prob_err": prob_err,
        "k5_kd_rel_err": float(np.mean(kd_err)),
        "num_samples": args.num_samples, "batch": args.batch,
        "teacher": args.teacher, "student": args.student,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform,
    }
    for key, v in med.items():
        what = ("jitted step, fixed batch" if key.endswith("step_only") else
                 "next(pipeline) + to_global_batch" if key.endswith("batch_only") else
                 "next(pipeline) + to_global_batch + step")
        print(f"{key:>17}: {1e3 * v:8.3f} ms ({what}; median of {args.rounds} rounds x "
              f"{args.steps})")
    for name in caches:
        print(f"cache {name:>8}: {disk[name] / n:7.1f} B/example on disk "
              f"({disk[name] / (n * args.num_samples):.1f} B/sample), built in "
              f"{build_s[name]:.2f} s")
    print(f"float16 storage: max |p16 - p32| = {prob_err:.2e}; top-5 (vs exact) Hinton KD "
          f"loss relative error at T={args.temperature:g}: {np.mean(kd_err):.2e}")
    for name in caches:
        shutil.rmtree(caches[name].path, ignore_errors=True)
    os.rmdir(root)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
