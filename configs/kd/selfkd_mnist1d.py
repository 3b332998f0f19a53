"""python -m experiments.kd --config configs/kd/selfkd_mnist1d.py --workdir runs/kd_selfkd_mnist1d  # ~8 min on a 2-core CPU

Two-stage self-distillation (DWPose) on MNIST-1D: stage 1 is ``configs/kd/mnist1d.py``'s Hinton
KD; in stage 2 the finished KD student is its own teacher for 4000 more steps (a fifth of stage
1) in which only its classifier head trains, same loss. Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("selfkd", mnist1d.get_config)
