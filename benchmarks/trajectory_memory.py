"""Memory and time of one MTT distillation step: our exact hypergradient vs naive autodiff.

    python benchmarks/trajectory_memory.py            # ConvNet-3 w128, 100 x 32x32x3 (~15 min)
    python benchmarks/trajectory_memory.py --smoke    # tiny, for tests
    python benchmarks/trajectory_memory.py --method scan   # ours as one lax.scan program (GPU/TPU)

One step = ``N`` SGD steps of the network on the synthetic images (DSA on), the normalised
parameter distance to an expert's target, and the gradient with respect to the images, labels
and the learnable inner learning rate.

Memory is XLA's compiled ``memory_analysis()`` (deterministic; argument + output + temp - alias):
- ours: :meth:`jaxkd.dataset_distill.unroll.Unroller.memory_bytes` with ``--method``:
  ``reverse`` (default; the largest of its per-step programs plus the ``N`` stored parameter
  vectors) or ``scan`` (one ``lax.scan`` + ``jax.checkpoint`` program, the form for
  accelerators, where XLA:CPU's slow while loops do not apply);
- naive: reverse-mode autodiff through the ``N`` steps with every residual kept. At ``N`` <= 20
  it is measured on the Python-unrolled program (what a direct port does); beyond, compiling
  the unrolled program takes minutes, so it is measured on the equivalent ``lax.scan`` without
  rematerialisation, which keeps the same residuals (both are printed where both exist).

Time: ``time_ours_over_naive_20`` is the median wall time of one hypergradient at ``N = 20``,
ours divided by the unrolled naive program, measured interleaved in this run.

Last line: JSON with ``ours_80_over_ours_10``, ``ours_over_naive_80``,
``time_ours_over_naive_20`` and the raw byte counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxkd.dataset_distill.augment import DSAConfig  # noqa: E402
from jaxkd.dataset_distill.mtt import _outer, make_inner_step  # noqa: E402
from jaxkd.dataset_distill.nets import FlatModel  # noqa: E402
from jaxkd.dataset_distill.unroll import Unroller, compiled_bytes  # noqa: E402
from jaxkd.models.convnet import ConvNet  # noqa: E402


def _scan_no_remat(step, outer):
    def loss(theta0, hyper, aux, ctx):
        theta_n, _ = jax.lax.scan(lambda t, a: (step(t, hyper, a), None), theta0, aux)
        return outer(theta_n, ctx)

    return jax.jit(jax.value_and_grad(loss, argnums=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", default="10,20,40,80", help="unrolled step counts")
    p.add_argument("--time-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--unrolled-max", type=int, default=20,
                   help="largest N whose naive memory is measured on the unrolled program")
    p.add_argument("--strategy", default="color_crop_cutout_flip_scale_rotate",
                   help="DSA strategy inside the unrolled steps")
    p.add_argument("--method", default="reverse", choices=("reverse", "scan"),
                   help="our exact hypergradient: host loop of per-step VJPs, or one scan")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    a = p.parse_args()
    if a.smoke:
        a.width, a.size, a.channels, a.images, a.rounds = 8, 8, 1, 10, 1
        a.steps, a.time_steps, a.unrolled_max, a.strategy = "2,16", 2, 2, "crop"
    counts = [int(n) for n in a.steps.split(",")]

    model = FlatModel.create(ConvNet(num_classes=10, width=a.width, depth=3),
                             (a.size, a.size, a.channels))
    step = make_inner_step(model, DSAConfig(strategy=a.strategy), soft=False)
    k = jax.random.split(jax.random.key(0), 3)
    hyper = {"images": jax.random.normal(k[0], (a.images, a.size, a.size, a.channels)),
             "labels": jax.nn.one_hot(jnp.arange(a.images) % 10, 10), "lr": jnp.float32(0.01)}
    theta0 = model.init(k[1])
    ctx = {"start": theta0, "target": theta0 + 0.01 * jax.random.normal(k[2], theta0.shape)}

    def aux(n):
        return {"idx": np.tile(np.arange(a.images, dtype=np.int32), (n, 1)),
                "key": jax.random.split(jax.random.key(1), n)}

    ours, naive = Unroller(step, _outer, method=a.method), Unroller(step, _outer, method="naive")
    scan_naive = _scan_no_remat(step, _outer)
    mem = {}
    for n in counts:
        mem[f"ours_{n}"] = ours.memory_bytes(theta0, hyper, aux(n), ctx)
        mem[f"naive_scan_{n}"] = compiled_bytes(scan_naive, theta0, hyper, aux(n), ctx)
        if n <= a.unrolled_max:
            mem[f"naive_unrolled_{n}"] = naive.memory_bytes(theta0, hyper, aux(n), ctx)
        print(f"N={n:3d}: ours {mem[f'ours_{n}'] / 2**30:.3f} GiB, naive (scan, no remat) "
              f"{mem[f'naive_scan_{n}'] / 2**30:.3f} GiB"
              + (f", naive (unrolled) {mem[f'naive_unrolled_{n}'] / 2**30:.3f} GiB"
                 if f"naive_unrolled_{n}" in mem else ""), flush=True)

    def naive_bytes(n):
        return mem.get(f"naive_unrolled_{n}", mem[f"naive_scan_{n}"])

    # Time at N = time_steps, interleaved rounds (compile excluded).
    x = aux(a.time_steps)
    runs = {"ours": lambda: ours.value_and_grad(theta0, hyper, x, ctx),
            "naive": lambda: naive.value_and_grad(theta0, hyper, x, ctx)}
    for fn in runs.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in runs}
    for _ in range(a.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    t_ours, t_naive = (statistics.median(times[k]) for k in ("ours", "naive"))
    print(f"N={a.time_steps}: ours {t_ours:.2f} s, naive {t_naive:.2f} s per hypergradient",
          flush=True)
    lo, hi = counts[0], counts[-1]
    out = {f"ours_{hi}_over_ours_{lo}": mem[f"ours_{hi}"] / mem[f"ours_{lo}"],
           f"ours_over_naive_{hi}": mem[f"ours_{hi}"] / naive_bytes(hi),
           f"time_ours_over_naive_{a.time_steps}": t_ours / t_naive,
           "method": a.method, "bytes": mem, "devices": jax.device_count(),
           "backend": jax.default_backend()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
