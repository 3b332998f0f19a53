"""python -m experiments.dataset_distill --config configs/dataset_distill/dm_digits.py --workdir runs/dd/dm_digits  # ~15 min on a 2-core CPU

Distribution Matching (DM) on scikit-learn's 8x8 digits: the synthetic images of each class
match the mean embedding of the class's real images under a fresh random ConvNet every
iteration (DSA on both sides). Evaluated with the protocol next to the baselines.

Args after the colon (comma-separated, all optional):
  ipc=N      images per class (1, 10 or 50; default 10).
  seed=N     distillation seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.dataset_distill import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

_IPCS = (1, 10, 50)


def get_config(arg=None):
    args = parse_config_arg(arg, flags=("smoke",), defaults={"ipc": 10, "seed": 0})
    check_choice("ipc", args.ipc, _IPCS)
    c = _base.dd_config(method="dm", data="sklearn_digits", ipc=args.ipc, seed=args.seed,
                        smoke=args.smoke)
    c.distill.lr_img = 1.0
    c.distill.lr_lr = 0.0
    if not args.smoke:
        c.distill.iterations = 2000
        c.distill.log_every = 50
        c.distill.checkpoint_every = 500
    return c
