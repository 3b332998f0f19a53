"""python -m experiments.dataset_distill --config configs/dataset_distill/ftd_digits.py --workdir runs/dd/ftd_digits  # ~40 min on a 2-core CPU

FTD (flat trajectory distillation) on scikit-learn's 8x8 digits: MTT (``mtt_digits.py``'s
settings) on experts trained with sharpness-aware minimisation (GSAM as the reference code:
rho 0.01, alpha 0.3, adaptive), and the exponential moving average of the synthetic images
saved and evaluated instead of the last iterate. The experts differ from MTT's, so they live in
their own directory (``workdir/experts`` by default; share them with ``--config.experts.dir``).

Args after the colon (comma-separated, all optional):
  ipc=N      images per class (1, 10 or 50; default 10).
  seed=N     distillation seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.dataset_distill import mtt_digits


def get_config(arg=None):
    return make("sklearn_digits", arg)


def make(data: str, arg=None):
    """The FTD config on ``data`` (also used by ``ftd_mnist1d.py``)."""
    c = mtt_digits.make(data, arg, name="ftd")
    c.experts.update(dict(sam_rho=0.01, sam_alpha=0.3, sam_adaptive=True))
    # FTD's 0.999 is for thousands of iterations; over 400 a 0.99 average keeps 2% of the init.
    c.distill.ema = 0.99 if c.distill.iterations >= 100 else 0.5
    return c
