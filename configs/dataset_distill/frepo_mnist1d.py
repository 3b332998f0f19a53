"""python -m experiments.dataset_distill --config configs/dataset_distill/frepo_mnist1d.py --workdir runs/dd/frepo_mnist1d  # ~15 min on a 2-core CPU

FRePo (kernel ridge regression on a model pool's features) on MNIST-1D: the digits config's
settings (``frepo_digits.py``) with the 1-D ConvNet (width 64, depth 3).

Args after the colon: as ``frepo_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import frepo_digits


def get_config(arg=None):
    return frepo_digits.make("mnist1d", arg)
