"""python -m experiments.kd --config configs/kd/pkt_mnist1d.py --workdir runs/kd_pkt_mnist1d  # ~6 min on a 2-core CPU

PKT on MNIST-1D: CE + 30000 * KL between cosine-similarity distributions of student and
teacher features, no logit KD; ``configs/kd/mnist1d.py``'s setting. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("pkt", mnist1d.get_config)
