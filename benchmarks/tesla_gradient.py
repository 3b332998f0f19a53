"""How far TESLA's two-pass gradient is from the exact MTT hypergradient, on real draws.

    python benchmarks/tesla_gradient.py --experts runs/dd/mtt_digits/experts   # ~5 min CPU
    python benchmarks/tesla_gradient.py --smoke                                # tiny, for tests

For ``--draws`` MTT iterations of ``configs/dataset_distill/mtt_digits.py:ipc=N`` (expert, start
epoch, minibatches and DSA drawn exactly as distillation draws them; the synthetic set is its
real-image initialisation), the gradient with respect to the images and the inner learning rate
by ``hypergrad="tesla"`` (every step's VJP fed the final cotangent, cross-step terms dropped,
see :mod:`jaxkd.dataset_distill.unroll`) against ``hypergrad="reverse"`` (exact). Printed per
draw and as means: the cosine similarity and the relative error ``|g_tesla - g| / |g|`` of the
image gradient, the ratio of the learning-rate gradients, and the median wall time of TESLA over
exact (interleaved, this run). Experts: ``--experts DIR`` (trained there if missing, with the
config's expert settings; reused if present).

Last line: JSON with ``images_cosine_mean``, ``images_rel_err_mean``, ``lr_grad_ratio_mean``,
``time_tesla_over_exact`` and the per-draw lists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.dataset_distill import mtt_digits  # noqa: E402
from jaxkd.dataset_distill import train as dd_train  # noqa: E402
from jaxkd.dataset_distill.mtt import MTTConfig, TrajectoryMatching  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", default="", help="expert directory (default: a temporary one)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="tiny experts and steps (tests)")
    args = p.parse_args()

    config = mtt_digits.get_config("smoke" if args.smoke else f"ipc={args.ipc}")
    config.experts.dir = args.experts or tempfile.mkdtemp(prefix="tesla-experts-")
    config.distill.progress = False
    data = dd_train.load_real(config.data.name)
    model = dd_train._model(config.model.name, config.model.kwargs.to_dict(), data,  # noqa: SLF001
                            "config.model")
    trajectories = dd_train._experts(config, data, model, "", progress=False)  # noqa: SLF001
    syn = dd_train.init_synthetic(config, data, model, trajectories)
    methods = {}
    for name in ("reverse", "tesla"):
        cfg = MTTConfig(**{**config.mtt.to_dict(), "hypergrad": name})
        methods[name] = TrajectoryMatching(model, trajectories, cfg, dd_train._dsa(config.dsa),  # noqa: SLF001
                                           soft=False, seed=config.seed)

    def grad(name: str, i: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        _, g, _ = methods[name].loss_and_grad(syn, i, args.draws)
        jax.block_until_ready(g)
        return g, time.perf_counter() - t0

    grad("reverse", 0), grad("tesla", 0)  # compile
    cosines, rel_errs, lr_ratios, times = [], [], [], {"reverse": [], "tesla": []}
    for i in range(args.draws):
        exact, t_exact = grad("reverse", i)
        approx, t_approx = grad("tesla", i)
        times["reverse"].append(t_exact)
        times["tesla"].append(t_approx)
        g, a = jnp.ravel(exact["images"]), jnp.ravel(approx["images"])
        cosines.append(float(jnp.vdot(g, a) / (jnp.linalg.norm(g) * jnp.linalg.norm(a))))
        rel_errs.append(float(jnp.linalg.norm(a - g) / jnp.linalg.norm(g)))
        lr_ratios.append(float(approx["lr"] / exact["lr"]))
        print(f"draw {i}: images cosine {cosines[-1]:.4f}, rel err {rel_errs[-1]:.4f}, "
              f"lr grad tesla/exact {lr_ratios[-1]:.4f}", flush=True)
    out = {
        "images_cosine_mean": statistics.fmean(cosines),
        "images_rel_err_mean": statistics.fmean(rel_errs),
        "lr_grad_ratio_mean": statistics.fmean(lr_ratios),
        "time_tesla_over_exact": statistics.median(times["tesla"])
        / statistics.median(times["reverse"]),
        "syn_steps": config.mtt.syn_steps, "ipc": config.ipc,
        "images_cosine": cosines, "images_rel_err": rel_errs, "lr_grad_ratio": lr_ratios,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
