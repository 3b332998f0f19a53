"""python -m experiments.kd --config configs/kd/dino_digits.py --workdir runs/kd_dino_digits  # ~1 min on a 2-core CPU

DINO-style self-distillation (Caron et al. 2021) next to the labels on digits: no external
teacher; the target is the student's own EMA (momentum 0.996), centred by a running mean of its
outputs (momentum 0.9) and sharpened (teacher temperature 0.04, student 0.1):
``0.5 * CE + 0.5 * CE(softmax((t - c) / 0.04), softmax(s / 0.1))``. Both see the pipeline's
one view (DINO's multi-crop is not reproduced). The results' teacher row is the EMA network.
Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("dino", digits.get_config)
