"""Cost of one sCD and one sCT training step relative to one plain diffusion training step.

    python benchmarks/consistency_step.py [--size 32 --channels 64 --batch 16 --rounds 5]
    python benchmarks/consistency_step.py --smoke    # tiny UNet, seconds (tests/test_benchmarks.py)

The same UNet (``jaxkd.models.denoisers.UNet``), batch and optimiser (Adam) in all three steps:

* ``diffusion``: the TrigFlow diffusion loss, forward + backward (3 forward-units of work);
* ``sct``: the sCM loss along the data tangent: one ``jax.jvp`` whose primal output is the
  differentiated forward (primal + tangent = 2 units) + backward through the primal (2 units):
  the floor is 4/3 of a diffusion step;
* ``scd``: the same along the teacher's tangent, plus the teacher's forward (1 unit): floor 5/3.

FLOPs are XLA's compiled ``cost_analysis()`` (deterministic); times are the median of
interleaved rounds in one run (``benchmarks/timing.py``). The floors hold only if the JVP's
primal forward is shared with the gradient's forward, which is what ``jaxkd.diffusion.scm`` does
(one ``jax.jvp`` inside ``value_and_grad``). The last line is a JSON object with
``scd_flop_ratio``, ``sct_flop_ratio``, ``scd_time_ratio``, ``sct_time_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402  (benchmarks/timing.py)

from jaxkd.diffusion import scm, trigflow
from jaxkd.models.denoisers import AdaptiveWeight, UNet

SIGMA_D = 0.5


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--image-channels", type=int, default=3)
    p.add_argument("--channels", type=int, default=64, help="UNet base width")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="steps per timing round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    a = p.parse_args(argv)
    if a.smoke:
        a.size, a.channels, a.batch, a.steps, a.rounds = 8, 8, 4, 1, 2
    return a


def build_steps(net, weight_net, tx, x0):
    """The three jitted steps ``(state, teacher, key) -> (state, loss)``."""

    def fn(params):
        return lambda x, t: net.apply(params, x, t)

    def update(state, loss_fn, key):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], key)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    def diffusion(state, teacher, key):
        del teacher
        return update(state, lambda p, k: jnp.mean(trigflow.diffusion_loss(
            fn(p["F"]), x0, k, sigma_d=SIGMA_D, p_mean=-1.2, p_std=1.2)), key)

    def consistency(distill):
        def step(state, teacher, key):
            def loss_fn(p, k):
                per, _ = scm.scm_loss(fn(p["F"]), lambda t: weight_net.apply(p["w"], t), x0, k,
                                      sigma_d=SIGMA_D, p_mean=-1.0, p_std=1.4, r=1.0,
                                      teacher=fn(teacher) if distill else None)
                return jnp.mean(per)
            return update(state, loss_fn, key)
        return step

    return {"diffusion": jax.jit(diffusion), "sct": jax.jit(consistency(False)),
            "scd": jax.jit(consistency(True))}


def main(argv=None) -> dict:
    a = _parse(argv)
    net = UNet(channels=a.channels, channel_mult=(1, 2), num_res_blocks=1)
    weight_net = AdaptiveWeight()
    shape = (a.batch, a.size, a.size, a.image_channels)
    x0 = jax.random.normal(jax.random.key(0), shape) * SIGMA_D
    params = {"F": jax.jit(net.init)(jax.random.key(1), x0, jnp.ones(a.batch)),
              "w": jax.jit(weight_net.init)(jax.random.key(2), jnp.ones(a.batch))}
    # Non-zero output layers, as after training (the UNet's last convs start at zero).
    params["F"] = jax.tree.map(lambda p: p + 0.01, params["F"])
    teacher = jax.tree.map(lambda p: p * 0.9, params["F"])
    tx = optax.adam(1e-4)
    state = {"params": params, "opt": tx.init(params)}
    steps = build_steps(net, weight_net, tx, x0)
    key = jax.random.key(3)
    flops, compiled = {}, {}
    for name, step in steps.items():  # compiled once: the timing below runs these executables
        compiled[name] = step.lower(state, teacher, key).compile()
        cost = compiled[name].cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops[name] = float(cost["flops"])
    runs = {name: (lambda: state, lambda s, b, f=fn: f(s, teacher, b), key)
            for name, fn in compiled.items()}
    times = timing.median_step_times(runs, steps=a.steps, rounds=a.rounds)
    n_params = sum(p.size for p in jax.tree.leaves(params["F"]))
    print(f"UNet {n_params / 1e6:.2f}M params, batch {shape}, on {jax.devices()[0].platform}")
    for name in steps:
        print(f"{name:>9}: {flops[name] / 1e9:8.3f} GFLOP  {times[name] * 1e3:8.1f} ms/step")
    out = {"scd_flop_ratio": flops["scd"] / flops["diffusion"],
           "sct_flop_ratio": flops["sct"] / flops["diffusion"],
           "scd_time_ratio": times["scd"] / times["diffusion"],
           "sct_time_ratio": times["sct"] / times["diffusion"]}
    print(f"floors: sCD 5/3 = {5 / 3:.3f}, sCT 4/3 = {4 / 3:.3f}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
