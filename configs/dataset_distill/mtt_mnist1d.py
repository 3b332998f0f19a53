"""python -m experiments.dataset_distill --config configs/dataset_distill/mtt_mnist1d.py --workdir runs/dd/mtt_mnist1d  # ~20 min on a 2-core CPU

MTT on MNIST-1D (4000 training signals of length 40): the digits config's settings
(``mtt_digits.py``) with the 1-D ConvNet (width 64, depth 3) for experts, distillation and
evaluation, and DSA without rotation (color, crop, cutout, scale along the signal).

Args after the colon: as ``mtt_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import mtt_digits


def get_config(arg=None):
    return mtt_digits.make("mnist1d", arg)
