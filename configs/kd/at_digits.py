"""python -m experiments.kd --config configs/kd/at_digits.py --workdir runs/kd_at_digits  # ~2 min on a 2-core CPU

Attention transfer (Zagoruyko & Komodakis 2017) on sklearn digits: the quickstart's ConvNet
teacher; the student is a thin ConvNet (width 8, one stage, no norm: the digits config's
``student=convnet``), since attention maps need spatial features. CE + 1000 * the distance between
the L2-normalised spatial attention maps (sum over channels of |A|^2) of the student's ``stage1``
[4, 4, 8] and the teacher's ``stage1`` [4, 4, 64], no logit KD; the scratch students are the same
ConvNet. Same args as ``configs/kd/digits.py`` except ``student``.
"""

from configs.kd import digits


def get_config(arg=None):
    c = digits.get_config(arg)
    c.student.model = "convnet"
    c.student.model_kwargs = dict(width=8, depth=1, norm="none")
    c.kd.alpha = 0.0
    c.kd.feature = dict(student_layers="stage1", teacher_layers="stage1", loss="at",
                        weight=1000.0, adapter="none", params=dict(p=2.0))
    return c
