"""python -m experiments.kd --config configs/kd/momentum_digits.py --workdir runs/kd_momentum_digits  # ~1 min on a 2-core CPU

Momentum distillation (ALBEF, Li et al. 2021) on sklearn digits: no external teacher; the
student distils from its own EMA (momentum 0.995) with weight 0.4 ramped over the first 10% of
steps, T = 1. The results' teacher row is that EMA network. Same args as
``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("momentum", digits.get_config)
