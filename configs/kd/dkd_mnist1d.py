"""python -m experiments.kd --config configs/kd/dkd_mnist1d.py --workdir runs/kd_dkd_mnist1d  # ~6 min on a 2-core CPU

Decoupled KD (DKD) on MNIST-1D: ``configs/kd/mnist1d.py``'s teacher, student, data and
budget with ``T^2 * (a * TCKD + b * NCKD)``, a = 1, b = 8, T = 4, alpha = 0.5. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("dkd", mnist1d.get_config)
