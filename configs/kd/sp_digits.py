"""python -m experiments.kd --config configs/kd/sp_digits.py --workdir runs/kd_sp_digits  # ~2 min on a 2-core CPU

Similarity-preserving KD (Tung & Mori 2019) on sklearn digits: the quickstart's teacher, student,
data and budget; the student's loss is CE + weight * (difference of the row-normalised batch Gram
matrices of the ``features``), weight 3000 (CRD benchmark), and no logit KD term (alpha = 0), as in
the CRD / RepDistiller benchmark for feature methods. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import digits


def get_config(arg=None):
    c = digits.get_config(arg)
    c.kd.alpha = 0.0
    c.kd.feature = dict(
        student_layers="features", teacher_layers="features",
        loss="sp", weight=3000.0, adapter="none",
        params={})
    return c
