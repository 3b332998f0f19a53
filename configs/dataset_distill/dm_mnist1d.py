"""python -m experiments.dataset_distill --config configs/dataset_distill/dm_mnist1d.py --workdir runs/dd/dm_mnist1d  # ~10 min on a 2-core CPU

Distribution matching on MNIST-1D: the digits config's settings (``dm_digits.py``) with the 1-D
ConvNet (width 64, depth 3) and DSA without rotation.

Args after the colon: as ``dm_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import dm_digits


def get_config(arg=None):
    return dm_digits.make("mnist1d", arg)
