"""python -m experiments.kd --config configs/kd/ensemble_mnist1d.py --workdir runs/kd_ensemble_mnist1d  # ~12 min on a 2-core CPU

Ensemble distillation on MNIST-1D: three ``configs/kd/mnist1d.py`` teachers (seeds s, s + 1,
s + 2); the student learns their mean predictive distribution with Hinton KD (T = 4,
alpha = 0.9). ``--config.kd.ensemble.combine=per_teacher`` for multi-teacher KD. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("ensemble", mnist1d.get_config)
