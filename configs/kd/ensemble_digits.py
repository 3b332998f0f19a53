"""python -m experiments.kd --config configs/kd/ensemble_digits.py --workdir runs/kd_ensemble_digits  # ~3 min on a 2-core CPU

Ensemble distillation on sklearn digits: three quickstart teachers (seeds s, s + 1, s + 2),
the student learns the mean of their predictive distributions with Hinton KD. Set
``--config.kd.ensemble.combine=per_teacher`` for multi-teacher KD (the weighted sum of the
losses against each teacher) and ``--config.kd.ensemble.weights='(2,1,1)'`` for per-teacher
weights. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("ensemble", digits.get_config)
