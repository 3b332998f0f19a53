"""python -m experiments.kd --config configs/kd/fitnet_mnist1d.py --workdir runs/kd_fitnet_mnist1d  # ~6 min on a 2-core CPU

FitNets on MNIST-1D: CE + 100 * MSE(linear regressor of the student's last hidden layer,
teacher's pooled features), no logit KD; ``configs/kd/mnist1d.py``'s setting. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("fitnet", mnist1d.get_config)
