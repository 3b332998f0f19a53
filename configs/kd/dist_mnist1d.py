"""python -m experiments.kd --config configs/kd/dist_mnist1d.py --workdir runs/kd_dist_mnist1d  # ~6 min on a 2-core CPU

DIST (Huang et al. 2022) on MNIST-1D: inter- and intra-class Pearson correlation of the
softened predictions, beta = gamma = 1, T = 4, alpha = 0.5; ``configs/kd/mnist1d.py``'s setting. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("dist", mnist1d.get_config)
