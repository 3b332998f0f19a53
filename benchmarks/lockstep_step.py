"""K networks in lockstep: one step per network versus one vmapped step, per architecture.

    python benchmarks/lockstep_step.py            # ~3 min on a 2-core CPU
    python benchmarks/lockstep_step.py --smoke    # tiny, for tests

Dataset distillation trains K networks of one architecture side by side (experts, the
evaluation protocol's fresh networks), either as K single-network steps or as one
``jax.vmap``-ed step, where each convolution becomes one grouped convolution over the K weight
sets; ``NetTrainer`` picks the loop for models with 2-D convolutions from these numbers. For the digits and MNIST-1D evaluation networks (K = 5,
500 training examples, batch 256, the DSA strategy of the data set) this prints the median
seconds per lockstep step of each form, interleaved in one run, and their ratio.

Last line: JSON ``{"<net>_vmap_over_loop": ratio, ...}`` (above 1: the per-network loop is
faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.timing import median_step_times  # noqa: E402
from configs.dataset_distill import _base  # noqa: E402
from jaxkd.dataset_distill.augment import DSAConfig  # noqa: E402
from jaxkd.dataset_distill.nets import FlatModel, NetTrainer, SGDConfig  # noqa: E402
from jaxkd.models import registry  # noqa: E402


def _nets(smoke: bool) -> dict[str, tuple[str, dict, tuple[int, ...], str]]:
    """name -> (registry name, kwargs, input shape, DSA strategy): the protocol's networks."""
    digits, m1d = _base.DATA["sklearn_digits"], _base.DATA["mnist1d"]
    nets = {
        "digits_convnet": (digits["eval_model"], digits["eval_kwargs"], (8, 8, 1),
                           digits["strategy"]),
        "digits_resnet8": ("resnet8", digits["cross_kwargs"]["resnet8"], (8, 8, 1),
                           digits["strategy"]),
        "digits_mlp": ("mlp", digits["cross_kwargs"]["mlp"], (8, 8, 1), digits["strategy"]),
        "mnist1d_convnet1d": (m1d["eval_model"], m1d["eval_kwargs"], (40, 1), m1d["strategy"]),
    }
    if smoke:
        return {"digits_convnet": ("convnet", dict(width=8, depth=2, norm="instance"),
                                   (8, 8, 1), "crop")}
    return nets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=5, help="networks in lockstep (K)")
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    examples = 64 if args.smoke else args.examples
    sgd = SGDConfig(batch_size=32 if args.smoke else 256)
    out = {}
    for name, (arch, kwargs, shape, strategy) in _nets(args.smoke).items():
        model = FlatModel.create(registry.build(arch, num_classes=10, **kwargs), shape)
        trainer = NetTrainer(model, sgd, DSAConfig(strategy=strategy))
        x = jax.random.normal(jax.random.key(0), (examples, *shape))
        y = jax.nn.one_hot(jnp.arange(examples) % 10, 10)

        def run(vmap):
            def build():
                thetas, vels = trainer.init(jax.random.key(1), args.nets)
                return thetas, vels, 0

            def step(state, _):
                thetas, vels, i = state
                thetas, vels = trainer.train(thetas, vels, x, y, seed=0, first_step=i,
                                             num_steps=1, total_steps=10**6, vmap=vmap)
                return (thetas, vels, i + 1), thetas

            return build, step, None

        t = median_step_times({"loop": run(False), "vmap": run(True)},
                              steps=1 if args.smoke else 3, rounds=2 if args.smoke else 5)
        out[f"{name}_vmap_over_loop"] = t["vmap"] / t["loop"]
        print(f"{name:20s} loop {t['loop'] * 1e3:8.1f} ms  vmap {t['vmap'] * 1e3:8.1f} ms  "
              f"vmap / loop {t['vmap'] / t['loop']:.2f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
