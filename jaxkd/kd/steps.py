"""Jitted train and eval steps for classifiers trained from labels and, optionally, a teacher.

The teacher is any function ``teacher_fn(teacher_vars, batch) -> logits``: a live network
(``model.apply`` on ``batch["image"]``) or a cache (``batch["teacher_logits"]``); both go through
the same step. Teacher variables are a jit *argument* (never trace-time constants), evaluated
outside ``value_and_grad`` under ``stop_gradient``, and never touch the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxkd import losses
from jaxkd.core import errors, loop, sharding
from jaxkd.kd import crd as crd_lib
from jaxkd.kd import features as features_lib

TeacherFn = Callable[[Any, dict], jax.Array]


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher as seen by a step: a function of ``(variables, batch)`` and its variables."""

    fn: TeacherFn
    variables: Any
    shardings: Any
    model: nn.Module | None = None  # live teachers only: also gives intermediate features

    @staticmethod
    def live(model: nn.Module, variables: Any, shardings: Any) -> "Teacher":
        return Teacher(lambda v, b: model.apply(v, b["image"], train=False), variables, shardings,
                       model)

    def logits_and_intermediates(self, variables: Any, batch: dict) -> tuple[jax.Array, dict]:
        """Logits and the ``intermediates`` the teacher sows (eval mode)."""
        if self.model is None:
            raise errors.ConfigError(
                "feature distillation needs a live teacher (its intermediate features); a cached "
                "teacher only provides logits")
        logits, state = self.model.apply(variables, batch["image"], train=False,
                                         mutable=["intermediates"])
        return logits, state["intermediates"]

    @staticmethod
    def cached(key: str = "teacher_logits") -> "Teacher":
        """Logits precomputed and carried in the batch under ``key`` (dataset reinforcement)."""
        return Teacher(lambda v, b: b[key], {}, {})

    # Ensembles: ``members(variables, batch) -> [K, B, C]``, one row per teacher; ``fn`` gives the
    # combined logits (evaluation, agreement and the "mean_*" targets); with ``per_teacher`` the
    # train step applies the loss to each member and sums with ``weights``.
    members: Callable[[Any, dict], jax.Array] | None = None
    weights: tuple[float, ...] = ()
    per_teacher: bool = False

    @staticmethod
    def ensemble(teachers: "list[Teacher]", weights: tuple[float, ...] | None = None,
                 combine: str = "mean_probs") -> "Teacher":
        """Several teachers as one (multi-teacher KD and teacher ensembles).

        ``combine``:
          * ``"mean_probs"``: the target is ``log(sum_k w_k softmax(t_k))``, the ensemble's
            predictive distribution (temperature is then applied to these log-probabilities);
          * ``"mean_logits"``: ``sum_k w_k t_k``;
          * ``"per_teacher"``: ``sum_k w_k loss(student, t_k)``, each teacher at temperature T.
        ``weights`` default to uniform and are normalised to sum to 1. All teachers must predict
        the same classes.
        """
        k = len(teachers)
        if k < 1:
            raise ValueError("an ensemble needs at least one teacher")
        w = tuple(float(x) for x in (weights or (1.0,) * k))
        if len(w) != k or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"ensemble weights {w} must be {k} non-negative numbers, not all 0")
        w = tuple(x / sum(w) for x in w)
        if combine not in COMBINE:
            raise ValueError(f"combine={combine!r} is not one of {sorted(COMBINE)}")
        fns = tuple(t.fn for t in teachers)

        def members(variables, batch):
            return jnp.stack([f(v, batch).astype(jnp.float32) for f, v in zip(fns, variables)])

        def fn(variables, batch):
            return combine_logits(members(variables, batch), w,
                                  "mean_logits" if combine == "mean_logits" else "mean_probs")

        return Teacher(fn, tuple(t.variables for t in teachers),
                       tuple(t.shardings for t in teachers), None, members=members, weights=w,
                       per_teacher=combine == "per_teacher")


COMBINE = ("mean_probs", "mean_logits", "per_teacher")


def combine_logits(member_logits: jax.Array, weights: tuple[float, ...], how: str) -> jax.Array:
    """``[K, B, C]`` teacher logits -> ``[B, C]``: weighted mean of logits, or the log of the
    weighted mean of probabilities (``how="mean_probs"``)."""
    w = jnp.asarray(weights, jnp.float32)
    z = member_logits.astype(jnp.float32)
    if how == "mean_logits":
        return jnp.einsum("k,kbc->bc", w, z)
    return jax.nn.logsumexp(jax.nn.log_softmax(z, -1) + jnp.log(w)[:, None, None], axis=0)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    loss: str = "hinton"
    alpha: float = 0.9  # weight of the distillation term; CE gets 1 - alpha
    temperature: float = 4.0
    params: tuple[tuple[str, Any], ...] = ()  # method-specific keyword arguments of the loss
    # The distillation term's weight ramps linearly from 0 to alpha over the first
    # ``warmup_steps`` steps (DKD's warm-up, ALBEF's alpha ramp); CE keeps 1 - alpha.
    warmup_steps: int = 0
    # "teacher": the given teacher; "ema": the student's own EMA (momentum distillation, ALBEF;
    # the state's ``ema_params`` with the step's ``ema_decay`` as momentum).
    source: str = "teacher"
    # KD-AIF: > 0 weights each example's distillation term by sigmoid(scale * z), z its
    # standardised influence score (see :func:`influence_kd_weights`); 0 = off.
    influence_scale: float = 0.0


# DeiT: the student is a ViT with a distillation token; its CLS head learns from the labels and
# its distillation head (sown as ``dist_logits``) from the teacher; ``params`` may set ``kind``
# ("hard": the teacher's argmax, "soft": KL at the temperature).
DEIT = "deit"
# DINO: CE(softmax((t - c) / tau_t), softmax(s / tau_s)) with the centre ``c`` an EMA of the
# teacher's outputs, kept in ``state["kd_center"]``; ``params``: ``student_temp`` (0.1),
# ``teacher_temp`` (0.04), ``center_momentum`` (0.9). Usually with an EMA teacher (source="ema").
DINO = "dino"
DINO_DEFAULTS = dict(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)


def influence_kd_weights(logits: jax.Array, features: jax.Array, kd_of_logits: Callable,
                         batch: dict, scale: float) -> jax.Array:
    """KD-AIF per-example weights of the distillation term, ``[B]`` in ``(0, 1)``.

    The influence of example ``i``'s distillation term on the labelled objective is approximated
    to first order in the student's last (classifier) layer: ``score_i = <g_i, g_ref>`` with
    ``g_i`` the gradient of example ``i``'s distillation loss and ``g_ref`` the gradient of the
    batch's cross-entropy with the true labels, both w.r.t. the classifier's weights and bias.
    For a linear head ``z = W h + b`` the per-example gradient is ``outer(dl/dz_i, [h_i, 1])``,
    so no per-example backward pass is needed. This is the gradient-alignment (TracIn) form of
    the influence function with the Hessian replaced by the identity, and the batch's labelled
    loss in place of a held-out set: teacher targets that pull the head the way the labels do
    get more weight, those that pull against them less. Scores are standardised and squashed by
    :func:`jaxkd.losses.influence_weights`.
    """
    z = jax.lax.stop_gradient(logits).astype(jnp.float32)
    h = jax.lax.stop_gradient(features).astype(jnp.float32)
    h1 = jnp.concatenate([h.reshape(h.shape[0], -1), jnp.ones((h.shape[0], 1), h.dtype)], -1)
    g_kd = jax.grad(kd_of_logits)(z)  # row i: d(kd)/dz_i, up to a positive per-batch factor
    g_ce = jax.grad(lambda zz: _ce(zz, batch))(z)
    per_example = jnp.einsum("bc,bh->bch", g_kd, h1).reshape(z.shape[0], -1)
    reference = jnp.einsum("bc,bh->ch", g_ce, h1).reshape(-1)
    # The first-order change of the labelled loss after a step on example i is -lr * score_i,
    # so a positive score marks a helpful example.
    return losses.influence_weights(per_example, reference, scale=scale, mask=batch["mask"])


def _model_vars(params: Any, batch_stats: Any) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _ce(logits: jax.Array, batch: dict) -> jax.Array:
    """Cross-entropy, mixup-aware (``label2``/``lam`` present when mixup is on), masked."""
    mask = batch["mask"]
    if "lam" not in batch:
        return losses.softmax_cross_entropy(logits, batch["label"], mask=mask)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll1 = -jnp.take_along_axis(log_p, batch["label"][:, None], -1)[:, 0]
    nll2 = -jnp.take_along_axis(log_p, batch["label2"][:, None], -1)[:, 0]
    nll = batch["lam"] * nll1 + (1.0 - batch["lam"]) * nll2
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    state_shardings: Any,
    teacher: Teacher | None = None,
    distill: DistillConfig = DistillConfig(),
    ema_decay: float = 0.0,
    feature: features_lib.FeatureTerm | None = None,
    adapter_apply: Callable[[dict, list], list] | None = None,
    crd: crd_lib.CRDSpec | None = None,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """Builds ``step(state, batch) -> (state, metrics)``, jitted with shardings and donation.

    ``batch`` holds global arrays ``image [B, ...]``, ``label [B]``, ``mask [B]`` (and mixup's
    ``label2``, ``lam``; optionally ``kd_weight [B]``, per-example weights of the distillation
    term, which then is the ``mask * kd_weight``-weighted mean). Without a teacher the loss is cross-entropy; with one it is
    ``(1 - alpha) * CE + alpha * distill_loss(student, teacher)``, plus
    ``feature.weight * feature_loss(student layers (adapted), teacher layers)`` when a feature
    term is given. A state with ``aux_params`` (the adapters) trains them together with the
    student: the optimizer sees ``{"model": params, "aux": aux_params}``. With ``crd`` the
    feature term (``loss="crd"``, one layer pair) is CRD: ``aux_params`` are its two projection
    heads, ``state["crd"]`` its memory banks, and ``batch["index"]`` the examples' indices
    (:mod:`jaxkd.kd.crd`).
    """
    self_teacher = distill.source == "ema"
    if self_teacher and (teacher is not None or not ema_decay):
        raise ValueError("an EMA teacher (source='ema') needs ema_decay > 0 and no other teacher")
    distilling = teacher is not None or self_teacher
    deit = distilling and distill.loss == DEIT
    dino = distilling and distill.loss == DINO
    dino_params = dict(DINO_DEFAULTS, **dict(distill.params)) if dino else {}
    kd_fn = losses.get_loss(distill.loss) if distilling and not (deit or dino) else None
    if feature is not None and teacher is None:
        raise ValueError("a feature term needs a teacher")
    per_teacher = teacher is not None and teacher.per_teacher
    collections = ["batch_stats"] + (["intermediates"] if feature is not None or deit else [])

    def distill_term(logits, t_all, t_logits, batch, kd_mask, inter, center=None):
        kwargs = dict(labels=batch["label"], temperature=distill.temperature, mask=kd_mask,
                      **dict(distill.params))
        if deit:
            params = dict(distill.params)
            loss, _ = losses.deit_distillation_loss(
                logits, inter["dist_logits"][0], t_logits, batch["label"],
                kind=params.get("kind", "hard"), alpha=1.0, temperature=distill.temperature,
                mask=kd_mask)
            return loss
        if dino:
            return losses.dino_loss(logits[None], t_logits[None], center,
                                    student_temp=dino_params["student_temp"],
                                    teacher_temp=dino_params["teacher_temp"],
                                    skip_same_view=False, mask=kd_mask)
        if per_teacher:
            return sum(w * kd_fn(logits, t_all[k], **kwargs)
                       for k, w in enumerate(teacher.weights))
        return kd_fn(logits, t_logits, **kwargs)

    def step(state: dict, batch: dict, teacher_vars: Any) -> tuple[dict, dict]:
        t_logits, t_feats, t_all = None, None, None
        contrast = crd_lib.negatives(crd, state["rng"], batch["index"]) if crd else None
        if feature is not None:
            t_logits, t_inter = teacher.logits_and_intermediates(teacher_vars, batch)
            t_logits = jax.lax.stop_gradient(t_logits)
            t_feats = jax.lax.stop_gradient(features_lib.pick(t_inter, feature.teacher_layers))
        elif per_teacher:
            t_all = jax.lax.stop_gradient(teacher.members(teacher_vars, batch))
            t_logits = combine_logits(t_all, teacher.weights, "mean_probs")
        elif teacher is not None:
            t_logits = jax.lax.stop_gradient(teacher.fn(teacher_vars, batch))
        elif self_teacher:
            t_logits = jax.lax.stop_gradient(model.apply(
                _model_vars(state["ema_params"], state["batch_stats"]), batch["image"],
                train=False))
        ramp = (jnp.minimum(1.0, (state["step"] + 1) / distill.warmup_steps)
                if distill.warmup_steps else 1.0)
        kd_mask = batch["mask"] * batch["kd_weight"] if "kd_weight" in batch else batch["mask"]
        if distill.influence_scale and t_logits is not None:
            z0, inter0 = model.apply(_model_vars(state["params"], state["batch_stats"]),
                                     batch["image"], train=False, mutable=["intermediates"])
            kd_mask = kd_mask * influence_kd_weights(
                z0, inter0["intermediates"]["features"][0],
                lambda z: distill_term(z, t_all, t_logits, batch, batch["mask"], {}), batch,
                distill.influence_scale)
        # Optional per-example weights of the distillation term (class re-weighting, influence
        # weights): the term becomes the kd_weight-weighted mean over the batch (kd_mask above).
        has_aux = "aux_params" in state
        trainable = ({"model": state["params"], "aux": state["aux_params"]} if has_aux
                     else state["params"])

        def loss_fn(trainable):
            params = trainable["model"] if has_aux else trainable
            logits, updates = model.apply(
                _model_vars(params, state["batch_stats"]), batch["image"], train=True,
                mutable=collections,
            )
            ce = _ce(logits, batch)
            aux = {"ce": ce}
            loss = ce
            if t_logits is not None:
                kd = distill_term(logits, t_all, t_logits, batch, kd_mask,
                                  updates.get("intermediates", {}), state.get("kd_center"))
                loss = (1.0 - distill.alpha) * ce + distill.alpha * ramp * kd
                aux["kd"] = kd
            crd_carry = None
            if feature is not None:
                s_feats = features_lib.pick(updates["intermediates"], feature.student_layers)
                if crd is not None:
                    feat, crd_carry = crd_lib.loss(crd, trainable["aux"], state["crd"],
                                                   s_feats[0], t_feats[0], batch["index"],
                                                   contrast, batch["mask"])
                else:
                    if adapter_apply is not None:
                        s_feats = adapter_apply(trainable["aux"], s_feats)
                    feat = features_lib.feature_loss(feature, s_feats, t_feats, batch["mask"])
                loss = loss + feature.weight * feat
                aux["feat"] = feat
            return loss, (logits, updates.get("batch_stats", {}), aux, crd_carry)

        (loss, (logits, new_bs, aux, crd_carry)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        params = new_trainable["model"] if has_aux else new_trainable
        new_rng = jax.random.split(state["rng"])[0]
        new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=new_bs,
                         opt_state=opt_state, rng=new_rng)
        if has_aux:
            new_state["aux_params"] = new_trainable["aux"]
        if dino:
            new_state["kd_center"] = losses.dino_center_update(
                state["kd_center"], t_logits[None], momentum=dino_params["center_momentum"],
                mask=batch["mask"])

        if ema_decay:
            new_state["ema_params"] = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema_params"], params
            )
        grad_norm = optax.global_norm(grads)
        update_norm = optax.global_norm(updates)
        if crd is not None:  # the banks stay out of the guard's select (a full copy per step):
            # a bad step writes no rows instead
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
            crd_state = new_state.pop("crd")
            crd_state = crd_lib.update(crd, crd_state, crd_carry, batch["index"],
                                       batch["mask"] * finite, finite)
        old_state = {k: v for k, v in state.items() if k != "crd"}
        new_state = loop.nonfinite_guard(old_state, new_state, loss, grad_norm, update_norm)
        if crd is not None:
            new_state["crd"] = crd_state

        mask = batch["mask"]
        denom = jnp.maximum(jnp.sum(mask), 1.0)
        pred = jnp.argmax(logits, -1)
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
                   "acc": jnp.sum((pred == batch["label"]) * mask) / denom}
        if distill.influence_scale and t_logits is not None:
            metrics["kd_weight_mean"] = jnp.sum(kd_mask) / denom
        if t_logits is not None:
            metrics["agreement"] = jnp.sum((pred == jnp.argmax(t_logits, -1)) * mask) / denom
        return new_state, metrics

    batch_sh = sharding.batch_sharding(mesh)
    teacher_sh = teacher.shardings if teacher is not None else None
    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sh, teacher_sh),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    teacher_vars = teacher.variables if teacher is not None else None
    return lambda state, batch: jitted(state, batch, teacher_vars)


def student_logits_fn(model: nn.Module, *, use_ema: bool = False) -> Callable[[dict, dict], jax.Array]:
    """``(state, batch) -> logits`` in eval mode, from the (EMA) params of a train state."""

    def logits_fn(state: dict, batch: dict) -> jax.Array:
        params = state["ema_params"] if use_ema else state["params"]
        return model.apply(_model_vars(params, state["batch_stats"]), batch["image"], train=False)

    return logits_fn


def make_eval_step(
    logits_fn: Callable[[Any, dict], jax.Array], *, mesh: Mesh, shardings: Any,
    teacher: Teacher | None = None,
) -> Callable[[Any, dict], dict]:
    """Builds ``eval_step(variables, batch) -> sums`` (``correct``, ``count``, ``nll`` and, with a
    teacher, ``agree``), to be summed over the batches of an eval pass by :func:`summarize_eval`.

    ``logits_fn(variables, batch)`` gives the evaluated model's logits; ``shardings`` are those of
    ``variables`` (a train state, or a teacher's variables).
    """

    def eval_step(variables: Any, batch: dict, teacher_vars: Any) -> dict:
        logits = logits_fn(variables, batch)
        mask = batch["mask"]
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        nll = -jnp.take_along_axis(log_p, batch["label"][:, None], -1)[:, 0]
        pred = jnp.argmax(logits, -1)
        out = {"correct": jnp.sum((pred == batch["label"]) * mask), "count": jnp.sum(mask),
               "nll": jnp.sum(nll * mask)}
        if teacher is not None:
            t_pred = jnp.argmax(teacher.fn(teacher_vars, batch), -1)
            out["agree"] = jnp.sum((pred == t_pred) * mask)
        return out

    jitted = jax.jit(
        eval_step,
        in_shardings=(shardings, sharding.batch_sharding(mesh),
                      teacher.shardings if teacher is not None else None),
        out_shardings=sharding.replicated(mesh),
    )
    teacher_vars = teacher.variables if teacher is not None else None
    return lambda variables, batch: jitted(variables, batch, teacher_vars)


def summarize_eval(sums: list[dict]) -> dict[str, float]:
    """Turns per-batch sums from :func:`make_eval_step` into ``acc``, ``loss`` (and ``agreement``)."""
    host = jax.device_get(sums)
    total = {k: float(sum(s[k] for s in host)) for k in host[0]}
    n = max(total["count"], 1.0)
    out = {"acc": total["correct"] / n, "loss": total["nll"] / n, "count": total["count"]}
    if "agree" in total:
        out["agreement"] = total["agree"] / n
    return out
