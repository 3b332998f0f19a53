"""python -m experiments.dataset_distill --config configs/dataset_distill/mtt_digits.py --workdir runs/dd/mtt_digits  # ~30 min on a 2-core CPU

Matching Training Trajectories (MTT) on scikit-learn's 8x8 digits, with the exact hypergradient
(memory flat in the number of unrolled steps). Trains 8 experts first (or reuses
``--config.experts.dir``), then distils ``ipc`` images per class and evaluates them with the
protocol (5 fresh ConvNets, last epoch) next to the random-subset, class-mean and full-data
baselines.

Args after the colon (comma-separated, all optional):
  ipc=N      images per class (1, 10 or 50; default 10).
  seed=N     distillation seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.dataset_distill import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

# Per ipc: (syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr), MTT's CIFAR-10 table
# scaled to this data set (see docs/results.md for the sweep that chose them).
_SETTINGS = {1: (20, 2, 2, 100.0, 1e-6), 10: (20, 2, 5, 100.0, 1e-5),
             50: (20, 2, 10, 100.0, 1e-5)}


def get_config(arg=None):
    return make("sklearn_digits", arg)


def make(data: str, arg=None):
    """The MTT config on ``data`` (also used by ``mtt_mnist1d.py``)."""
    args = parse_config_arg(arg, flags=("smoke",), defaults={"ipc": 10, "seed": 0},
                            config_path=f"configs/dataset_distill/mtt_{_base.SHORT[data]}.py")
    check_choice("ipc", args.ipc, _SETTINGS)
    c = _base.dd_config(method="mtt", data=data, ipc=args.ipc, seed=args.seed,
                        smoke=args.smoke)
    if not args.smoke:
        steps, epochs, start, lr_img, lr_lr = _SETTINGS[args.ipc]
        c.mtt.syn_steps, c.mtt.expert_epochs, c.mtt.max_start_epoch = steps, epochs, start
        c.distill.lr_img, c.distill.lr_lr = lr_img, lr_lr
    return c
