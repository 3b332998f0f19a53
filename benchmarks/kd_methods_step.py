"""Step time of every KD objective relative to a Hinton KD step on the same teacher/student pair.

    python benchmarks/kd_methods_step.py [--batch 64 --steps 5 --rounds 3]

All steps share the student, the teacher, the optimizer and the batch; they differ only in the
distillation objective (logit terms through ``config.kd.loss``, feature/relational terms through a
:class:`jaxkd.kd.features.FeatureTerm` on named layers, with adapters where shapes differ).
Rounds are interleaved over the methods so that load drift hits all alike, and the ratio of median
step times to Hinton's is reported; ``cached_over_ce`` compares a KD step whose teacher logits come
from the batch (a cache) with a plain cross-entropy step. The last line is a JSON object of ratios
by method name.
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
from jaxkd.kd import crd as crd_lib
from jaxkd.kd import features as features_lib
from jaxkd.kd import steps as steps_lib

# name -> (logit loss, logit params, alpha, feature term or None)
_METHODS = {
    "hinton": ("hinton", {}, 0.9, None),
    "dkd": ("dkd", {"alpha": 1.0, "beta": 8.0}, 0.5, None),
    "dist": ("dist", {"beta": 1.0, "gamma": 1.0}, 0.5, None),
    "fitnet": ("hinton", {}, 0.0, ("fitnet", "stage2", "stage2", "conv", 100.0)),
    "at": ("hinton", {}, 0.0, ("at", "stage1,stage2,stage3", "stage1,stage2,stage3", "none",
                               1000.0)),
    "rkd": ("hinton", {}, 0.0, ("rkd", "features", "features", "none", 1.0)),
    "pkt": ("hinton", {}, 0.0, ("pkt", "features", "features", "none", 30000.0)),
    "sp": ("hinton", {}, 0.0, ("sp", "stage3", "stage3", "none", 3000.0)),
    "ickd": ("hinton", {}, 0.0, ("ickd", "stage3", "stage3", "conv", 1.0)),
    "cc": ("hinton", {}, 0.0, ("cc", "features", "features", "none", 0.02)),
    "vid": ("hinton", {}, 0.0, ("vid", "stage2", "stage2", "vid", 1.0)),
    # CRD: 128-d heads, memory banks for a CIFAR-sized training set (50000), 4096 negatives (the
    # paper's 16384 costs about 4x more in the bank gathers).
    "crd": ("hinton", {}, 0.0, ("crd", "features", "features", "none", 0.8)),
}
_CRD_DATA, _CRD_NEGATIVES = 50000, 4096


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", default=",".join(_METHODS))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = _parse(argv)
    mesh = sharding.make_mesh(-1, 1)
    shape = (args.image_size, args.image_size, 3)
    student = models.build("convnet", num_classes=args.num_classes, width=32, depth=3,
                           norm="batch")
    tmodel = models.build("convnet", num_classes=args.num_classes, width=64, depth=3,
                          norm="batch")
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.01, schedule="constant", warmup_steps=0,
                                         momentum=0.9, nesterov=False, weight_decay=5e-4,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 1000)
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(1), shape)
    t_sh = sharding.param_shardings(t_vars, mesh)
    t_vars = jax.device_put(t_vars, t_sh)
    live = steps_lib.Teacher.live(tmodel, t_vars, t_sh)
    s_vars = jax.eval_shape(lambda r: state_lib.init_variables(student, r, shape),
                            jax.random.PRNGKey(0))
    s_shapes = features_lib.intermediate_shapes(student, s_vars, shape)
    t_shapes = features_lib.intermediate_shapes(tmodel, t_vars, shape)

    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(args.batch, *shape)).astype(np.float32),
             "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
             "mask": np.ones(args.batch, np.float32),
             "index": rng.choice(_CRD_DATA, args.batch, replace=False).astype(np.int32)}
    gbatch = sharding.to_global_batch(batch, mesh)
    cached = dict(gbatch, teacher_logits=jax.jit(live.fn)(t_vars, gbatch))

    def build_step(teacher, loss="hinton", params=None, alpha=0.9, feat=None):
        term, aux_init, adapter_apply, crd = None, None, None, None
        if feat is not None:
            name, s_layers, t_layers, adapter, weight = feat
            term = features_lib.FeatureTerm(name, features_lib.parse_layers(s_layers, "s"),
                                            features_lib.parse_layers(t_layers, "t"), weight,
                                            adapter)
            features_lib.check_layers(term, s_shapes, t_shapes)
            if name == crd_lib.NAME:
                crd = crd_lib.spec_from_params(dict(num_negatives=_CRD_NEGATIVES), _CRD_DATA)
                aux_init = crd_lib.aux_init(crd, s_shapes[s_layers], t_shapes[t_layers])
            else:
                aux_init, adapter_apply = features_lib.make_adapters(term, s_shapes, t_shapes)
        init_fn = state_lib.make_init_fn(student, tx, shape, ema=False, aux_init=aux_init)
        if crd is not None:
            base = init_fn
            init_fn = lambda r: dict(base(r), crd=crd_lib.state_init(crd, r))  # noqa: E731
        build, _, sh = state_lib.create_sharded(init_fn, jax.random.PRNGKey(0), mesh,
                                                "replicated")
        step = steps_lib.make_train_step(
            student, tx, mesh=mesh, state_shardings=sh, teacher=teacher,
            distill=steps_lib.DistillConfig(loss, alpha, 4.0, tuple(sorted((params or {}).items()))),
            feature=term, adapter_apply=adapter_apply, crd=crd)
        return build, step

    runs = {"ce": (*build_step(None), gbatch),
            "cached": (*build_step(steps_lib.Teacher.cached()), cached)}
    names = ["hinton"] + [m for m in args.methods.split(",") if m != "hinton"]
    unknown = sorted(set(names) - set(_METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; valid: {', '.join(_METHODS)}")
    for name in names:
        loss, params, alpha, feat = _METHODS[name]
        runs[name] = (*build_step(live, loss, params, alpha, feat), gbatch)

    med = timing.median_step_times(runs, steps=args.steps, rounds=args.rounds)
    for k, v in med.items():
        print(f"{k:>8}: {1e3 * v:8.2f} ms/step")
    out = {f"{k}_over_hinton": med[k] / med["hinton"] for k in med if k not in ("ce", "cached")}
    out["cached_over_ce"] = med["cached"] / med["ce"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
