"""python -m experiments.kd --config configs/kd/cc_digits.py --workdir runs/kd_cc_digits  # ~2 min on a 2-core CPU

Correlation congruence (CCKD, Peng et al. 2019) on sklearn digits: the quickstart's teacher,
student, data and budget; CE + 0.02 * the squared distance between the batch's example-correlation
matrices (Gaussian kernel, gamma 0.4, order-2 Taylor expansion) of the student's and the teacher's
``features``, no logit KD (RepDistiller's benchmark weight). Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("cc", digits.get_config)
