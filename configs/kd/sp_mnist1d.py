"""python -m experiments.kd --config configs/kd/sp_mnist1d.py --workdir runs/kd_sp_mnist1d  # ~6 min on a 2-core CPU

Similarity-preserving KD on MNIST-1D: CE + 3000 * batch Gram-matrix distance of student and
teacher features, no logit KD; ``configs/kd/mnist1d.py``'s setting. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("sp", mnist1d.get_config)
