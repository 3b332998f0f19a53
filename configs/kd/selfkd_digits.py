"""python -m experiments.kd --config configs/kd/selfkd_digits.py --workdir runs/kd_selfkd_digits  # ~2 min on a 2-core CPU

Two-stage self-distillation (DWPose, Yang et al. 2023) on sklearn digits: stage 1 is the
quickstart's Hinton KD; in stage 2 the finished KD student is its own teacher for 300 more steps
(a fifth of stage 1) in which only its classifier head trains, with the same loss (T = 4,
alpha = 0.5). The results add ``kd_self/acc_*`` for the stage-2 students. Same args as
``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("selfkd", digits.get_config)
