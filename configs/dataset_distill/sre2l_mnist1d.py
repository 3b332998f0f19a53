"""python -m experiments.dataset_distill --config configs/dataset_distill/sre2l_mnist1d.py --workdir runs/dd/sre2l_mnist1d  # ~10 min on a 2-core CPU

SRe2L on MNIST-1D: the digits config's settings (``sre2l_digits.py``) with a BatchNorm 1-D
ConvNet teacher (width 64, depth 3, ``norm="batch"``); recovery crops are random segments of
the signal resized back to its length.

Args after the colon: as ``sre2l_digits.py`` (ipc=N, seed=N, cda, smoke).
"""

from configs.dataset_distill import sre2l_digits


def get_config(arg=None):
    return sre2l_digits.make("mnist1d", arg)
