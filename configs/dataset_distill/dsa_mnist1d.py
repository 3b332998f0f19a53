"""python -m experiments.dataset_distill --config configs/dataset_distill/dsa_mnist1d.py --workdir runs/dd/dsa_mnist1d  # ~30 min on a 2-core CPU (ipc 10)

DSA (gradient matching with siamese augmentation) on MNIST-1D: the digits config's settings
(``dsa_digits.py``) with the 1-D ConvNet (width 64, depth 3) and DSA without rotation.

Args after the colon: as ``dc_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import dc_digits


def get_config(arg=None):
    return dc_digits.make("mnist1d", arg, augment=True)
