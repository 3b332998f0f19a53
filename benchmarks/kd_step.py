"""Cost of a KD train step relative to a plain cross-entropy step of the same student.

    python benchmarks/kd_step.py [--teacher resnet32x4 --student resnet8x4 --batch 64 ...]

Three jitted steps are built over the same student, optimizer and batch:

* ``ce``: student forward + backward on labels only;
* ``kd``: a live teacher forward (eval mode, ``stop_gradient``) + the student's KD step;
* ``cached``: the KD step with the teacher's logits read from the batch (a teacher-output cache,
  as in dataset reinforcement): the same step function, a different ``Teacher``.

Each is timed over ``--steps`` steps after a warm-up (compilation excluded), and the rounds are
interleaved (ce, kd, cached, ce, kd, ...) so that machine-load drift hits all three alike; the
ratio of medians is reported. Expected: ``kd_over_ce`` ~ 1 + teacher-forward / student-step;
``cached_over_ce`` ~ 1.0. The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402  (benchmarks/timing.py)

from jaxkd import models
from jaxkd.core import optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import steps as steps_lib


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="convnet", help="teacher model name")
    p.add_argument("--teacher-kwargs", default='{"width": 128, "depth": 3, "norm": "batch"}')
    p.add_argument("--student", default="convnet", help="student model name")
    p.add_argument("--student-kwargs", default='{"width": 32, "depth": 3, "norm": "batch"}')
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = _parse(argv)
    mesh = sharding.make_mesh(-1, 1)
    shape = (args.image_size, args.image_size, args.channels)
    student = models.build(args.student, num_classes=args.num_classes,
                           **json.loads(args.student_kwargs))
    teacher_model = models.build(args.teacher, num_classes=args.num_classes,
                                 **json.loads(args.teacher_kwargs))
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.01, schedule="constant", warmup_steps=0,
                                         momentum=0.9, nesterov=False, weight_decay=5e-4,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 1000)
    build, _, shardings = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, shape, ema=False), jax.random.PRNGKey(0), mesh,
        "replicated")
    t_vars = state_lib.init_variables(teacher_model, jax.random.PRNGKey(1), shape)
    t_sh = sharding.param_shardings(t_vars, mesh)
    t_vars = jax.device_put(t_vars, t_sh)
    live = steps_lib.Teacher.live(teacher_model, t_vars, t_sh)

    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(args.batch, *shape)).astype(np.float32),
             "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
             "mask": np.ones(args.batch, np.float32)}
    gbatch = sharding.to_global_batch(batch, mesh)
    cached_logits = jax.jit(live.fn)(t_vars, gbatch)
    gbatch_cached = dict(gbatch, teacher_logits=cached_logits)

    steps = {
        "ce": (steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=shardings),
               gbatch),
        "kd": (steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=shardings,
                                         teacher=live), gbatch),
        "cached": (steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=shardings,
                                             teacher=steps_lib.Teacher.cached()), gbatch_cached),
    }
    med = timing.median_step_times(
        {k: (build, fn, b) for k, (fn, b) in steps.items()}, steps=args.steps,
        rounds=args.rounds)
    out = {
        "kd_over_ce": med["kd"] / med["ce"],
        "cached_over_ce": med["cached"] / med["ce"],
        "ce_step_ms": 1e3 * med["ce"],
        "teacher": args.teacher, "student": args.student, "batch": args.batch,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform,
    }
    for k, v in med.items():
        print(f"{k:>7}: {1e3 * v:8.2f} ms/step (median of {args.rounds} rounds x {args.steps})")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
