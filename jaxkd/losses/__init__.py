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


def get_loss(name: str):
    """Returns the distillation term registered as ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


__all__ = [
    "LOSSES",
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
