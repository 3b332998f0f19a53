"""python -m experiments.kd --config configs/kd/momentum_mnist1d.py --workdir runs/kd_momentum_mnist1d  # ~5 min on a 2-core CPU

Momentum distillation (ALBEF) on MNIST-1D: no external teacher; the student distils from its
own EMA (momentum 0.995, weight 0.4 ramped over the first 10% of steps, T = 1); the results'
teacher row is that EMA network. ``configs/kd/mnist1d.py``'s setting otherwise. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("momentum", mnist1d.get_config)
