"""python -m experiments.kd --config configs/kd/deit_digits.py --workdir runs/kd_deit_digits  # ~4 min on a 2-core CPU

DeiT distillation token (Touvron et al. 2021) on sklearn digits: the quickstart's ConvNet teacher;
the student is a small ViT (2x2 patches of the 8x8 image, width 64, 2 blocks) with a distillation
token: its CLS head learns from the labels and its distillation head from the teacher's hard
decision (``kd.params.kind = "hard"``; "soft" for KL at T), ``0.5 * CE + 0.5 * distill``; at
test time the two heads' logits are averaged. The scratch students are the same ViT without the
distillation token (DeiT's baseline). Same args as ``configs/kd/digits.py`` (except ``student``).
"""

from configs.kd import digits


def get_config(arg=None):
    c = digits.get_config(arg)
    c.student.model = "vit"
    c.student.model_kwargs = dict(patch_size=2, hidden=64, depth=2, heads=2, mlp_dim=128,
                                  distill_token=True)
    c.kd.loss = "deit"
    c.kd.alpha = 0.5
    c.kd.temperature = 1.0
    c.kd.params = dict(kind="hard")
    return c
