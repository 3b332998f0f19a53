"""python -m experiments.kd --config configs/kd/cached_digits.py --workdir runs/kd_cached_digits  # ~2 min on a 2-core CPU

Cached teacher outputs (dataset reinforcement, Faghri et al. 2023) on sklearn digits: the
quickstart's teacher runs once over 8 sampled augmentations (shift by up to 1 pixel) of every
training image and its top-5 log-probabilities, their classes, the log-normaliser and the
augmentation parameters are stored in ``workdir/teacher_cache``; the KD students then replay
those augmentations and learn from the stored outputs without running the teacher (the
scratch students see fresh shifts every step). Hinton KD, T = 4, alpha = 0.5. Same args as
``configs/kd/digits.py``.
"""

from configs.kd import digits


def get_config(arg=None):
    c = digits.get_config(arg)
    c.data.augment.random_crop_padding = 1
    c.teacher.cache.num_samples = 8
    c.teacher.cache.top_k = 5
    return c
