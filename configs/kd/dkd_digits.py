"""python -m experiments.kd --config configs/kd/dkd_digits.py --workdir runs/kd_dkd_digits  # ~2 min on a 2-core CPU

Decoupled KD (DKD, Zhao et al. 2022) on sklearn digits: the quickstart's teacher, student, data
and budget, with the distillation term ``T^2 * (a * TCKD + b * NCKD)``, a = 1, b = 8, T = 4
(the paper's CIFAR defaults). The paper adds DKD to a unit-weight CE; here
``(1 - alpha) * CE + alpha * DKD`` with alpha = 0.5, the same objective up to a factor 2 that
Adam's normalisation removes. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("dkd", digits.get_config)
