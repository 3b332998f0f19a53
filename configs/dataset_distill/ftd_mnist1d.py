"""python -m experiments.dataset_distill --config configs/dataset_distill/ftd_mnist1d.py --workdir runs/dd/ftd_mnist1d  # ~30 min on a 2-core CPU

FTD on MNIST-1D: the digits config's settings (``ftd_digits.py``: MTT on GSAM experts, an EMA
of the synthetic signals) with the 1-D ConvNet (width 64, depth 3).

Args after the colon: as ``mtt_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import ftd_digits


def get_config(arg=None):
    return ftd_digits.make("mnist1d", arg)
