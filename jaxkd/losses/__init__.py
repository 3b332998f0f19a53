"""Pure loss functions, addressed from configs by name through ``LOSSES``."""

from jaxkd.losses.kd import (
    clip_affinity_mimicking_loss,
    deit_distillation_loss,
    dino_center_update,
    dino_loss,
    dist_loss,
    dkd_loss,
    hinton_kd_loss,
    hinton_kd_objective,
    influence_weights,
    kl_divergence_with_logits,
    pearson_correlation,
    softmax_cross_entropy,
    weighted_kd_loss,
)


from jaxkd.losses.features import (
    attention_transfer_loss,
    cc_loss,
    fitnet_loss,
    ickd_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
)


def _ignores_labels(fn):
    """Adapts a loss without a ``labels`` argument to the registry signature."""

    def wrapped(student_logits, teacher_logits, *, labels=None, **kwargs):
        del labels
        return fn(student_logits, teacher_logits, **kwargs)

    wrapped.__doc__ = fn.__doc__
    wrapped.__name__ = fn.__name__
    return wrapped


# Logit distillation terms, switchable with ``config.kd.loss``, all with the signature
# ``(student_logits [B, C], teacher_logits [B, C], *, labels [B], temperature, mask, **params)
# -> scalar``; the training step adds the label cross-entropy as ``(1 - alpha) * CE + alpha * term``
# and passes ``config.kd.params`` as ``**params``.
LOSSES = {
    "hinton": _ignores_labels(hinton_kd_loss),
    "dkd": dkd_loss,
    "dist": dist_loss,
}


# Feature / relational terms, switchable with ``config.kd.feature.loss``, all called as
# ``fn(student_feat, teacher_feat, *, mask, **params) -> scalar`` on one pair of captured layers
# (the student's after its adapter, if any); a term over several layer pairs sums them.
FEATURE_LOSSES = {
    "fitnet": fitnet_loss,
    "at": attention_transfer_loss,
    "rkd": rkd_loss,
    "pkt": pkt_loss,
    "sp": similarity_preserving_loss,
    "ickd": ickd_loss,
    "cc": cc_loss,
}
# Those that compare the two features elementwise (or channel by channel): shapes must match.
SAME_SHAPE_FEATURE_LOSSES = frozenset({"fitnet", "ickd"})


def get_feature_loss(name: str):
    """Returns the feature distillation term registered as ``name``."""
    if name not in FEATURE_LOSSES:
        raise ValueError(
            f"unknown feature loss {name!r}; valid feature losses: {', '.join(sorted(FEATURE_LOSSES))}")
    return FEATURE_LOSSES[name]


def get_loss(name: str):
    """Returns the distillation term registered as ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


__all__ = [
    "FEATURE_LOSSES",
    "LOSSES",
    "SAME_SHAPE_FEATURE_LOSSES",
    "get_feature_loss",
    "clip_affinity_mimicking_loss",
    "deit_distillation_loss",
    "dino_center_update",
    "dino_loss",
    "dist_loss",
    "dkd_loss",
    "get_loss",
    "hinton_kd_loss",
    "hinton_kd_objective",
    "influence_weights",
    "kl_divergence_with_logits",
    "pearson_correlation",
    "softmax_cross_entropy",
    "weighted_kd_loss",
]
