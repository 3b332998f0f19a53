"""Pure loss functions, addressed from configs by name through ``LOSSES``."""

from jaxkd.losses.kd import (
    hinton_kd_loss,
    hinton_kd_objective,
    kl_divergence_with_logits,
    softmax_cross_entropy,
)

# Distillation terms with the signature
# ``(student_logits, teacher_logits, *, temperature, mask) -> scalar``; the training step adds the
# label cross-entropy as ``(1 - alpha) * CE + alpha * term``.
LOSSES = {
    "hinton": hinton_kd_loss,
}


def get_loss(name: str):
    """Returns the distillation term registered as ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


__all__ = [
    "LOSSES",
    "get_loss",
    "hinton_kd_loss",
    "hinton_kd_objective",
    "kl_divergence_with_logits",
    "softmax_cross_entropy",
]
