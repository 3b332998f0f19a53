"""python -m experiments.dataset_distill --config configs/dataset_distill/dc_mnist1d.py --workdir runs/dd/dc_mnist1d  # ~25 min on a 2-core CPU (ipc 10)

Dataset Condensation (DC, gradient matching) on MNIST-1D: the digits config's settings
(``dc_digits.py``) with the 1-D ConvNet (width 64, depth 3); no augmentation while distilling.

Args after the colon: as ``dc_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import dc_digits


def get_config(arg=None):
    return dc_digits.make("mnist1d", arg, augment=False)
