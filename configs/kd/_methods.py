"""Each KD method's settings, applied on top of a dataset's base config (``digits.py``,
``mnist1d.py``), so ``configs/kd/<method>_<data>.py`` is the base plus one entry here.

Defaults follow the method cards (../shared/METHODS.md and the papers): logit methods use
``(1 - alpha) * CE + alpha * term``; feature/relational methods use CE + ``weight`` * term with no
logit KD (alpha = 0), as in the CRD / RepDistiller benchmark.
"""

from typing import Callable

import ml_collections


def _logit(loss: str, temperature: float, kd_weight: float, **params):
    def apply(c):
        c.kd.loss = loss
        c.kd.temperature = temperature
        c.kd.alpha = kd_weight
        c.kd.params = params
    return apply


def _feature(loss: str, weight: float, adapter: str = "none", **params):
    def apply(c):
        c.kd.alpha = 0.0
        c.kd.feature = dict(student_layers="features", teacher_layers="features", loss=loss,
                            weight=weight, adapter=adapter, params=params)
    return apply


def _function_matching(c):
    # Beyer et al. 2022: the teacher and the student see the same aggressive view (mixup with
    # lam ~ Beta(1, 1) here, on top of the base config's crops), the student matches the
    # teacher's function only (no labels), T = 1. Same budget as the other methods here.
    c.kd.alpha = 1.0
    c.kd.temperature = 1.0
    c.data.augment.mixup_alpha = 1.0


def _ensemble(c):
    # Three teachers (seeds s, s + 1, s + 2), the target is their mean predictive distribution.
    c.teacher.num_teachers = 3
    c.kd.ensemble.combine = "mean_probs"


def _momentum(c):
    # ALBEF momentum distillation: no external teacher; the target is the student's own EMA
    # (momentum 0.995), weight alpha = 0.4 ramped up over the first 10% of training.
    c.kd.source = "ema"
    c.kd.momentum = 0.995
    c.kd.alpha = 0.4
    c.kd.temperature = 1.0
    c.kd.warmup_steps = max(1, c.train.steps // 10)


def _dino(c):
    # DINO-style self-distillation next to the labels: the teacher is the student's EMA
    # (momentum 0.996), centred by an EMA of its outputs (0.9) and sharpened (tau_t 0.04)
    # against the student at tau_s 0.1; one view for both (the pipeline's), weight 0.5.
    c.kd.source = "ema"
    c.kd.momentum = 0.996
    c.kd.loss = "dino"
    c.kd.alpha = 0.5
    c.kd.params = dict(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)


def _influence(c):
    # KD-AIF: Hinton KD with each example's term weighted by sigmoid(z), z its standardised
    # first-order influence on the labelled loss (jaxkd.kd.steps.influence_kd_weights).
    c.kd.influence_scale = 1.0


def _head_self_distillation(c):
    # DWPose's two stages: Hinton KD from the teacher, then the student teaches itself for a
    # fifth more steps with only its head trained.
    c.kd.self_distill_steps = max(1, c.train.steps // 5)


METHODS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "hinton": lambda c: None,
    "dkd": _logit("dkd", 4.0, 0.5, alpha=1.0, beta=8.0),
    "dist": _logit("dist", 4.0, 0.5, beta=1.0, gamma=1.0),
    "fitnet": _feature("fitnet", 100.0, adapter="linear"),
    "rkd": _feature("rkd", 1.0, distance_weight=25.0, angle_weight=50.0),
    "pkt": _feature("pkt", 30000.0),
    "sp": _feature("sp", 3000.0),
    # CRD: weight 0.8, 128-d heads, T = 0.07, bank momentum 0.5; the paper's 16384 negatives
    # are capped at N - 1 on small datasets.
    # Correlation congruence: CE + 0.02 * distance between the batch's example-correlation
    # (Gaussian kernel, order-2 Taylor) matrices of student and teacher features.
    "cc": _feature("cc", 0.02, gamma=0.4, p_order=2, kernel="gaussian"),
    # VID: CE + weight * the negative log-likelihood of the teacher feature under a Gaussian
    # whose mean a small regressor predicts from the student feature (RepDistiller: weight 1,
    # initial variance 5).
    "vid": _feature("vid", 1.0, adapter="vid", init_pred_var=5.0, eps=1e-5),
    "crd": _feature("crd", 0.8, dim=128, num_negatives=16384, temperature=0.07, momentum=0.5),
    "fm": _function_matching,
    "ensemble": _ensemble,
    "momentum": _momentum,
    "kdaif": _influence,
    "dino": _dino,
    "selfkd": _head_self_distillation,
}


def make(method: str, base: Callable) -> Callable:
    """``get_config(arg)`` of ``base`` with ``method``'s settings applied."""
    def get_config(arg=None):
        c = base(arg)
        METHODS[method](c)
        return c
    return get_config
