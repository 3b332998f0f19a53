"""python -m experiments.kd --config configs/kd/rkd_mnist1d.py --workdir runs/kd_rkd_mnist1d  # ~6 min on a 2-core CPU

RKD on MNIST-1D: CE + distance (25) and angle (50) relations between the student's and the
teacher's feature vectors in the batch, no logit KD; ``configs/kd/mnist1d.py``'s setting. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("rkd", mnist1d.get_config)
