"""python -m experiments.kd --config configs/kd/sp_digits.py --workdir runs/kd_sp_digits  # ~2 min on a 2-core CPU

Similarity-preserving KD (Tung & Mori 2019) on sklearn digits: the quickstart's teacher, student,
data and budget; the student's loss is CE + weight * (difference of the row-normalised batch Gram
matrices of the ``features``), weight 3000 (CRD benchmark), and no logit KD term (alpha = 0), as in
the CRD / RepDistiller benchmark for feature methods. Same args as ``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("sp", digits.get_config)
