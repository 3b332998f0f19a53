"""python -m experiments.kd --config configs/kd/dkd_digits.py --workdir runs/kd_dkd_digits  # ~2 min on a 2-core CPU

Decoupled KD (DKD, Zhao et al. 2022) on sklearn digits: the quickstart's teacher, student, data
and budget, with the distillation term ``T^2 * (a * TCKD + b * NCKD)``, a = 1, b = 8, T = 4
(the paper's CIFAR defaults). The paper adds DKD to a unit-weight CE; here
``(1 - alpha) * CE + alpha * DKD`` with alpha = 0.5, the same objective up to a factor 2 that
Adam's normalisation removes. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import digits


def get_config(arg=None):
    c = digits.get_config(arg)
    c.kd.loss = "dkd"
    c.kd.temperature = 4.0
    c.kd.alpha = 0.5
    c.kd.params = dict(alpha=1.0, beta=8.0)
    return c
