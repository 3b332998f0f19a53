"""Where ``jax.vmap`` is slower than a loop on XLA:CPU: K networks in lockstep, DC's classes.

    python benchmarks/vmap_vs_loop.py            # ~5 min on a 2-core CPU
    python benchmarks/vmap_vs_loop.py --smoke    # tiny, for tests

vmapping a 2-D convolution over its weights, or its weight gradient over examples groups, makes
XLA emit grouped convolutions, which XLA:CPU runs far slower than the same number of plain ones.
Two places in dataset distillation hit this, and each now picks its form per model:

- ``NetTrainer``: K networks of one architecture trained side by side (experts, the evaluation
  protocol's fresh networks), as K single-network steps or one vmapped step. Measured for the
  digits and MNIST-1D evaluation networks (K = 5, 500 training examples, batch 256, the data
  set's DSA strategy): seconds per lockstep step.
- ``GradientMatching`` (DC / DSA): the per-class gradient-matching distance and its image
  gradient, vmapped over classes or one compiled call per class. Measured for the digits
  distillation ConvNet (width 64) at ipc 50 with DSA (140 real images per class).

Each pair is timed interleaved in one run (medians). Last line: JSON
``{"<case>_vmap_over_loop": ratio, ...}`` (above 1: the loop is faster).
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
from jaxkd.dataset_distill.dc import DCConfig, GradientMatching  # noqa: E402
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
        _report(out, name, t)
    _report(out, "dc_update", _dc_times(args.smoke))
    print(json.dumps(out))


def _report(out: dict, name: str, t: dict[str, float]) -> None:
    out[f"{name}_vmap_over_loop"] = t["vmap"] / t["loop"]
    print(f"{name:20s} loop {t['loop'] * 1e3:8.1f} ms  vmap {t['vmap'] * 1e3:8.1f} ms  "
          f"vmap / loop {t['vmap'] / t['loop']:.2f}", flush=True)


def _dc_times(smoke: bool) -> dict[str, float]:
    """Median seconds of one DC/DSA image gradient, vmapped over classes vs class by class."""
    digits = _base.DATA["sklearn_digits"]
    kwargs = dict(width=8, depth=2, norm="instance") if smoke else digits["model_kwargs"]
    model = FlatModel.create(registry.build(digits["model"], num_classes=10, **kwargs), (8, 8, 1))
    ipc, per_class = (2, 8) if smoke else (50, 140)
    dsa_cfg = DSAConfig(strategy="crop" if smoke else digits["strategy"])
    x_real = jnp.zeros((10 * per_class, 8, 8, 1))
    y_real = jnp.repeat(jnp.arange(10), per_class)
    images = jax.random.normal(jax.random.key(0), (10 * ipc, 8, 8, 1))
    real = jax.random.normal(jax.random.key(1), (10, per_class, 8, 8, 1))
    keys = jax.random.split(jax.random.key(2), 10)

    def run(per_class_calls):
        method = GradientMatching(model, x_real, y_real, 10, ipc, DCConfig(), dsa_cfg, seed=0,
                                  per_class_calls=per_class_calls)
        theta = model.init(jax.random.key(3))
        return (lambda: theta,
                lambda th, _: (th, method.matching_loss_and_grad(images, th, real, keys)[1]),
                None)

    return median_step_times({"loop": run(True), "vmap": run(False)}, steps=1,
                             rounds=2 if smoke else 5)


if __name__ == "__main__":
    main()
