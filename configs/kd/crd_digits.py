"""python -m experiments.kd --config configs/kd/crd_digits.py --workdir runs/kd_crd_digits  # ~2 min on a 2-core CPU

Contrastive representation distillation (CRD, Tian et al. 2020) on digits: ``configs/kd/digits.py``'s
teacher, student, data and budget; CE + 0.8 * CRD between 128-d projections of the student's and
the teacher's ``features`` (both heads trained), NCE against memory banks with momentum 0.5,
T = 0.07, negatives drawn uniformly from all other training examples (16384 capped at N - 1),
no logit KD. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("crd", digits.get_config)
