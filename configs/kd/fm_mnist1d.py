"""python -m experiments.kd --config configs/kd/fm_mnist1d.py --workdir runs/kd_fm_mnist1d  # ~6 min on a 2-core CPU

Function matching on MNIST-1D: the same shifted-and-mixed-up view (lam ~ Beta(1, 1)) for
teacher and student, the student learns from the teacher only (alpha = 1, T = 1); the scratch
students train with the same mixup and labels. ``configs/kd/mnist1d.py``'s setting otherwise. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("fm", mnist1d.get_config)
