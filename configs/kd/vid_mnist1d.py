"""python -m experiments.kd --config configs/kd/vid_mnist1d.py --workdir runs/kd_vid_mnist1d  # ~7 min on a 2-core CPU

Variational information distillation (VID, Ahn et al. 2019) on mnist1d: ``configs/kd/mnist1d.py``'s
teacher, student, data and budget; CE + the Gaussian negative log-likelihood of the teacher's
``features`` under a mean predicted from the student's ``features`` by a small regressor
(three bias-free layers) and a learned per-channel variance (initial 5), weight 1, no logit KD.
Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("vid", mnist1d.get_config)
