"""python -m experiments.kd --config configs/kd/fitnet_digits.py --workdir runs/kd_fitnet_digits  # ~2 min on a 2-core CPU

FitNets (Romero et al. 2015) hint on sklearn digits: the quickstart's teacher, student, data and
budget; the student's loss is CE + weight * (MSE between a learned linear regressor of the
student's ``features`` (32) and the teacher's ``features`` (256)), weight 100 (the CRD benchmark's
beta), and no logit KD term (alpha = 0), as in the CRD / RepDistiller benchmark for feature
methods. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("fitnet", digits.get_config)
