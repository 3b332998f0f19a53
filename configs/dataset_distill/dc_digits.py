"""python -m experiments.dataset_distill --config configs/dataset_distill/dc_digits.py --workdir runs/dd/dc_digits  # ~25 min on a 2-core CPU (ipc 10)

Dataset Condensation (DC, gradient matching) on scikit-learn's 8x8 digits: for a fresh ConvNet,
the synthetic images of each class are moved so that the network's gradient on them matches its
gradient on real images of the class (per layer, per output unit, 1 - cos); between image
updates the network trains on the synthetic set. No augmentation while distilling (that is
DSA: ``dsa_digits.py``); evaluated with the protocol (DSA at evaluation) next to the baselines.

Args after the colon (comma-separated, all optional):
  ipc=N      images per class (1, 10 or 50; default 10).
  seed=N     distillation seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.dataset_distill import _base

_IPCS = (1, 10, 50)
_OUTER = {1: 1000, 10: 200, 50: 40}  # outer iterations (fresh networks) per ipc


def get_config(arg=None):
    return make("sklearn_digits", arg, augment=False)


def make(data: str, arg=None, *, augment: bool):
    """The gradient-matching config on ``data``: DC, or DSA with ``augment`` (``dsa_*.py``)."""
    args, c = _base.method_config("dc", data, arg, _IPCS, name="dsa" if augment else "dc")
    if not augment:
        c.dsa.strategy = ""
    # DC's and DSA's image step (SGD, momentum 0.5, lr 0.1) and the reference's loops per ipc
    # (config.dc; ipc 1: one update per fresh network, ipc 10: 10 updates with 50 epochs of
    # network training between them, ipc 50: 50 and 10).
    c.distill.lr_img = 0.1
    c.distill.lr_lr = 0.0
    # Outer iterations (fresh networks) x outer_loop image updates: the reference runs 1000
    # outer iterations; fewer at larger ipc here for CPU time (about 2000 image updates).
    # Checkpoints every 100 image updates or 5 outer iterations (ipc 50: 250 of 2000 updates,
    # ~4 min of one core), mid outer iteration if need be (the network is in the state).
    loops = c.dc.outer_loop
    _base.run_length(c, args.smoke, _OUTER[args.ipc] * loops, log_every=10 * loops,
                     checkpoint_every=max(100, 5 * loops))
    if args.smoke:
        c.dc.outer_loop, c.dc.inner_loop = 2, 2
    return c
