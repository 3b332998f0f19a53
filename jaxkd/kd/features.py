"""Feature distillation by layer name: capture intermediates, adapt shapes, apply a feature loss.

Models ``sow`` their features into the ``intermediates`` collection (``features``, ``stage1``,
...); nothing here edits a model. A :class:`FeatureTerm` names a loss from
``jaxkd.losses.FEATURE_LOSSES``, the student and teacher layers it compares (pairs, in order), its
weight, and an optional learnable adapter applied to each student feature:

* ``"none"``: the features are compared as they are (relational losses such as RKD, PKT, SP only
  need equal batch sizes; FitNets needs equal shapes);
* ``"linear"``: a dense layer from the flattened student feature to the teacher feature's size
  (then reshaped to the teacher's shape);
* ``"conv"``: a 1x1 convolution to the teacher's channels, resizing the student map to the
  teacher's height and width first (:class:`jaxkd.kd.adapters.ConvRegressor`, linear);
* ``"vid"`` (with ``loss="vid"`` only): :class:`jaxkd.kd.adapters.VIDRegressor`, the mean
  regressor and per-channel variance of variational information distillation.

Adapter parameters are trained with the student (they live in the train state's ``aux_params``
and in the optimizer) and are never part of the student model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import losses
from jaxkd.core import errors
from jaxkd.kd import adapters

ADAPTERS = ("none", "linear", "conv", "vid")
# VID (variational information distillation) is a feature loss whose adapter is part of it: a
# regressor of the teacher feature's mean plus a learned per-channel variance.
VID = "vid"


@dataclasses.dataclass(frozen=True)
class FeatureTerm:
    loss: str
    student_layers: tuple[str, ...]
    teacher_layers: tuple[str, ...]
    weight: float = 1.0
    adapter: str = "none"
    params: tuple[tuple[str, Any], ...] = ()


def parse_layers(value: str, key: str) -> tuple[str, ...]:
    """``"stage1,stage2"`` -> ``("stage1", "stage2")``; an empty name is an error naming ``key``."""
    names = tuple(v.strip() for v in value.split(","))
    if not value or any(not n for n in names):
        raise errors.ConfigError(f"{key}={value!r} must be one or more comma-separated layer names")
    return names


def intermediate_shapes(model: nn.Module, variables_shape: Any, input_shape: tuple[int, ...],
                        ) -> dict[str, tuple[int, ...]]:
    """``{sown name: per-example shape}`` of a model's ``intermediates``, without running it."""

    def run(v, x):
        _, state = model.apply(v, x, train=False, mutable=["intermediates"])
        return state["intermediates"]

    out = jax.eval_shape(run, variables_shape,
                         jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    return {k: tuple(v[0].shape[1:]) for k, v in out.items() if isinstance(v, tuple)}


def check_layers(term: FeatureTerm, student_shapes: dict, teacher_shapes: dict) -> None:
    """Unknown layer names and shape mismatches, each with the fix, before anything runs."""
    if len(term.student_layers) != len(term.teacher_layers):
        raise errors.ConfigError(
            f"config.kd.feature.student_layers names {len(term.student_layers)} layers and "
            f"config.kd.feature.teacher_layers {len(term.teacher_layers)}; they are compared in "
            f"pairs, so give the same number")
    for key, names, shapes, who in (
            ("student_layers", term.student_layers, student_shapes, "student"),
            ("teacher_layers", term.teacher_layers, teacher_shapes, "teacher")):
        for n in names:
            if n not in shapes:
                raise errors.ConfigError(
                    f"config.kd.feature.{key}: the {who} has no layer {n!r}; available: "
                    + ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())))
    if term.adapter not in ADAPTERS:
        raise errors.ConfigError(
            f"config.kd.feature.adapter={term.adapter!r} is not valid; choose one of: "
            f"{', '.join(ADAPTERS)}")
    if term.loss in losses.SAME_SHAPE_FEATURE_LOSSES and term.adapter == "none":
        for s, t in zip(term.student_layers, term.teacher_layers):
            if student_shapes[s] != teacher_shapes[t]:
                raise errors.ConfigError(
                    f"config.kd.feature.loss={term.loss!r} compares student layer {s!r} of shape "
                    f"{list(student_shapes[s])} with teacher layer {t!r} of shape "
                    f"{list(teacher_shapes[t])}; set config.kd.feature.adapter to 'linear' or "
                    f"'conv' to learn a projection")
    if (term.loss == VID) != (term.adapter == VID):
        raise errors.ConfigError(
            "config.kd.feature.loss='vid' and config.kd.feature.adapter='vid' go together (VID's "
            "regressor predicts the teacher feature's mean and variance); set both")
    if term.adapter == "conv":
        for s, t in zip(term.student_layers, term.teacher_layers):
            if len(student_shapes[s]) != 3 or len(teacher_shapes[t]) != 3:
                raise errors.ConfigError(
                    f"config.kd.feature.adapter='conv' needs [H, W, C] maps; student layer {s!r} "
                    f"is {list(student_shapes[s])}, teacher layer {t!r} is "
                    f"{list(teacher_shapes[t])}; use adapter='linear'")


class _Linear(nn.Module):
    """Dense map from a flattened feature to ``out_shape``."""

    out_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Dense(int(np.prod(self.out_shape)), name="linear")(x.reshape(x.shape[0], -1))
        return y.reshape(x.shape[0], *self.out_shape)


def _adapter(term: FeatureTerm, t_shape: tuple[int, ...]) -> nn.Module:
    if term.adapter == "linear":
        return _Linear(tuple(t_shape))
    if term.adapter == VID:
        params = dict(term.params)
        return adapters.VIDRegressor(
            out_channels=t_shape[-1], init_pred_var=params.get("init_pred_var", 5.0),
            eps=params.get("eps", 1e-5), out_hw=tuple(t_shape[:2]) if len(t_shape) == 3 else None)
    # "conv": a linear 1x1 regressor; the ConvRegressor's BN is off, so ``train`` changes nothing.
    return adapters.ConvRegressor(out_channels=t_shape[-1], out_hw=tuple(t_shape[:2]),
                                  use_batch_norm=False, relu=False)


def make_adapters(term: FeatureTerm, student_shapes: dict, teacher_shapes: dict
                  ) -> tuple[Callable[[jax.Array], dict] | None, Callable[[dict, list], list] | None]:
    """Returns ``(init(rng) -> aux_params, apply(aux_params, student_feats) -> adapted)``, or
    ``(None, None)`` when the term has no adapter (nothing to train, features used as they are)."""
    if term.adapter == "none":
        return None, None
    mods = [_adapter(term, teacher_shapes[t]) for t in term.teacher_layers]
    kw = {"train": False} if term.adapter == "conv" else {}

    def init(rng: jax.Array) -> dict:
        return {
            f"adapter{i}": m.init(jax.random.fold_in(rng, i),
                                  jnp.zeros((1, *student_shapes[s]), jnp.float32), **kw)["params"]
            for i, (m, s) in enumerate(zip(mods, term.student_layers))
        }

    def apply(aux_params: dict, feats: list) -> list:
        return [m.apply({"params": aux_params[f"adapter{i}"]}, f, **kw)
                for i, (m, f) in enumerate(zip(mods, feats))]

    return init, apply


def check_loss_accepts(term: FeatureTerm, student_shapes: dict, teacher_shapes: dict,
                       aux_init, adapter_apply) -> None:
    """Traces the term on placeholder shapes, turning the loss's own shape errors into a
    :class:`ConfigError` before any training (e.g. attention transfer on a flat MLP layer)."""

    def run(rng):
        s = [jnp.zeros((2, *student_shapes[n])) for n in term.student_layers]
        t = [jnp.zeros((2, *teacher_shapes[n])) for n in term.teacher_layers]
        if adapter_apply is not None:
            s = adapter_apply(aux_init(rng), s)
        return feature_loss(term, s, t, jnp.ones((2,)))

    try:
        jax.eval_shape(run, jax.random.PRNGKey(0))
    except (ValueError, TypeError) as e:
        raise errors.ConfigError(
            f"config.kd.feature (loss={term.loss!r}, student_layers={term.student_layers}, "
            f"teacher_layers={term.teacher_layers}, adapter={term.adapter!r}) does not fit: "
            f"{e}") from None


def feature_loss(term: FeatureTerm, student_feats: list, teacher_feats: list,
                 mask: jax.Array) -> jax.Array:
    """Sum over layer pairs of the term's loss (``weight`` not applied)."""
    teacher_feats = [jax.lax.stop_gradient(t) for t in teacher_feats]
    if term.loss == VID:  # the adapted student features are (mean, alpha) pairs
        eps = dict(term.params).get("eps", 1e-5)
        return sum(losses.features.vid_loss(m, t, a, eps=eps, mask=mask)
                   for (m, a), t in zip(student_feats, teacher_feats))
    fn = losses.get_feature_loss(term.loss)
    return sum(fn(s, t, mask=mask, **dict(term.params))
               for s, t in zip(student_feats, teacher_feats))


def pick(intermediates: dict, names: tuple[str, ...]) -> list:
    """The sown values (first element of each sown tuple) for ``names``."""
    return [intermediates[n][0] for n in names]
