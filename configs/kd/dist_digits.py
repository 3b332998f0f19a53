"""python -m experiments.kd --config configs/kd/dist_digits.py --workdir runs/kd_dist_digits  # ~2 min on a 2-core CPU

DIST (Huang et al. 2022) on sklearn digits: the quickstart's teacher, student, data and budget,
with the distillation term ``T^2 * (b * (1 - inter-class Pearson) + g * (1 - intra-class Pearson))``
on softened probabilities, b = g = 1. T = 4 as in the paper's CIFAR setting (T = 1 on ImageNet).
``(1 - alpha) * CE + alpha * DIST`` with alpha = 0.5 (CE and DIST weighted 1:1, as in the paper).
Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("dist", digits.get_config)
