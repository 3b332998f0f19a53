"""python -m experiments.kd --config configs/kd/rkd_digits.py --workdir runs/kd_rkd_digits  # ~2 min on a 2-core CPU

Relational KD (Park et al. 2019) on sklearn digits: the quickstart's teacher, student, data and
budget; the student's loss is CE + weight * (distance (weight 25) + angle (weight 50) relations
between the examples' ``features``), weight 1, with the paper's 25/50 inside, and no logit KD term
(alpha = 0), as in the CRD / RepDistiller benchmark for feature methods. Same args as
``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("rkd", digits.get_config)
