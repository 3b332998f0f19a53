"""python -m experiments.kd --config configs/kd/pkt_digits.py --workdir runs/kd_pkt_digits  # ~2 min on a 2-core CPU

Probabilistic knowledge transfer (Passalis & Tefas 2018) on sklearn digits: the quickstart's
teacher, student, data and budget; the student's loss is CE + weight * (KL between the cosine-
similarity conditional distributions of the ``features``), weight 30000 (CRD benchmark), and no
logit KD term (alpha = 0), as in the CRD / RepDistiller benchmark for feature methods. Same args as
``configs/kd/digits.py``.
"""

from configs.kd import _methods, digits

get_config = _methods.make("pkt", digits.get_config)
