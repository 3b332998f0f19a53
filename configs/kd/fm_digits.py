"""python -m experiments.kd --config configs/kd/fm_digits.py --workdir runs/kd_fm_digits  # ~2 min on a 2-core CPU

Function matching (Beyer et al. 2022, "patient and consistent") on sklearn digits: the
quickstart's teacher, student and budget; teacher and student see the same mixup view (lam ~
Beta(1, 1)), the student learns from the teacher only (alpha = 1, T = 1). The scratch students
of this config train with the same mixup and labels. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("fm", digits.get_config)
