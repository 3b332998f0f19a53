"""python -m experiments.kd --config configs/kd/crd_mnist1d.py --workdir runs/kd_crd_mnist1d  # ~7 min on a 2-core CPU

Contrastive representation distillation (CRD, Tian et al. 2020) on mnist1d: ``configs/kd/mnist1d.py``'s
teacher, student, data and budget; CE + 0.8 * CRD between 128-d projections of the student's and
the teacher's ``features`` (both heads trained), NCE against memory banks with momentum 0.5,
T = 0.07, negatives drawn uniformly from all other training examples (16384 capped at N - 1),
no logit KD. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("crd", mnist1d.get_config)
