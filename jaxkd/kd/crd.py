"""Contrastive representation distillation (CRD, Tian et al. 2020) inside the train step.

The pure pieces live in :mod:`jaxkd.losses.features` (``crd_loss``, the memory banks, negative
sampling, the normalisation constants); this module holds what the step needs around them:

* two projection heads (:class:`jaxkd.kd.adapters.LinearEmbed`, ``dim`` wide), for the student's
  and the teacher's feature, both trained with the student (the state's ``aux_params``; the
  teacher's *features* are constants, its head is not);
* the non-trainable state ``state["crd"]``: the two ``[N, dim]`` memory banks, the constants
  ``z_s``, ``z_t`` fixed on the first step (as RepDistiller does) and a ``ready`` flag;
* per step: ``K`` negatives drawn uniformly from the other examples (from the state's RNG), the
  loss, and after it the momentum update of the banks at the batch's example indices
  (``batch["index"]``, from a pipeline built with ``with_index=True``).

Config: ``config.kd.feature.loss = "crd"`` with ``params`` ``dim`` (128), ``num_negatives``
(16384 in the paper; capped at ``N - 1``), ``temperature`` (0.07), ``momentum`` (0.5), on one
student and one teacher layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxkd.core import errors
from jaxkd.kd import adapters
from jaxkd.losses import features as F

NAME = "crd"
DEFAULTS = dict(dim=128, num_negatives=16384, temperature=0.07, momentum=0.5)


@dataclasses.dataclass(frozen=True)
class CRDSpec:
    num_data: int
    dim: int = 128
    num_negatives: int = 16384
    temperature: float = 0.07
    momentum: float = 0.5


def spec_from_params(params: dict, num_data: int) -> CRDSpec:
    """The spec from ``config.kd.feature.params`` (unknown keys are a config error)."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise errors.ConfigError(
            f"config.kd.feature.params has {unknown} which CRD does not take; valid: "
            f"{sorted(DEFAULTS)}")
    p = dict(DEFAULTS, **params)
    if num_data < 2:
        raise errors.ConfigError(f"CRD needs at least 2 training examples, got {num_data}")
    if int(p["dim"]) < 1 or int(p["num_negatives"]) < 1 or p["temperature"] <= 0 or not (
            0 <= p["momentum"] < 1):
        raise errors.ConfigError(
            f"config.kd.feature.params for CRD need dim >= 1, num_negatives >= 1, "
            f"temperature > 0 and 0 <= momentum < 1; got {p}")
    return CRDSpec(num_data=num_data, dim=int(p["dim"]),
                   num_negatives=min(int(p["num_negatives"]), num_data - 1),
                   temperature=float(p["temperature"]), momentum=float(p["momentum"]))


def aux_init(spec: CRDSpec, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
    """``init(rng) -> {"embed_s", "embed_t"}``: the two projection heads' parameters."""
    head = adapters.LinearEmbed(spec.dim)

    def init(rng: jax.Array) -> dict:
        k_s, k_t = jax.random.split(rng)
        return {"embed_s": head.init(k_s, jnp.zeros((1, *student_shape)))["params"],
                "embed_t": head.init(k_t, jnp.zeros((1, *teacher_shape)))["params"]}

    return init


def state_init(spec: CRDSpec, rng: jax.Array) -> dict:
    """``state["crd"]``: fresh unit-norm banks, unset normalisation constants."""
    mem_s, mem_t = F.crd_init_memory(rng, spec.num_data, spec.dim)
    return {"mem_s": mem_s, "mem_t": mem_t, "z_s": jnp.ones((), jnp.float32),
            "z_t": jnp.ones((), jnp.float32), "ready": jnp.zeros((), jnp.bool_)}


def negatives(spec: CRDSpec, rng: jax.Array, indices: jax.Array) -> jax.Array:
    return F.crd_sample_negatives(jax.random.fold_in(rng, 0x0C2D), indices, spec.num_data,
                                  spec.num_negatives)


def loss(spec: CRDSpec, aux_params: dict, crd_state: dict, student_feat: jax.Array,
         teacher_feat: jax.Array, indices: jax.Array, contrast: jax.Array, mask: jax.Array
         ) -> tuple[jax.Array, dict[str, Any]]:
    """``(loss, carry)``: the CRD loss of the batch and what :func:`update` needs afterwards."""
    head = adapters.LinearEmbed(spec.dim)
    emb_s = head.apply({"params": aux_params["embed_s"]}, student_feat)
    emb_t = head.apply({"params": aux_params["embed_t"]},
                       jax.lax.stop_gradient(teacher_feat))
    args = (crd_state["mem_s"], crd_state["mem_t"], indices, contrast)

    def first_batch_constants():  # only on the first step (the bank gathers are the cost)
        return F.crd_normalization_constants(
            jax.lax.stop_gradient(emb_s), jax.lax.stop_gradient(emb_t), *args,
            temperature=spec.temperature, num_data=spec.num_data, mask=mask)

    z_s, z_t = jax.lax.cond(crd_state["ready"],
                            lambda: (crd_state["z_s"], crd_state["z_t"]), first_batch_constants)
    value = F.crd_loss(emb_s, emb_t, *args, temperature=spec.temperature,
                       num_data=spec.num_data, z_s=z_s, z_t=z_t, mask=mask)
    carry = {"emb_s": jax.lax.stop_gradient(emb_s), "emb_t": jax.lax.stop_gradient(emb_t),
             "z_s": z_s, "z_t": z_t}
    return value, carry


def update(spec: CRDSpec, crd_state: dict, carry: dict, indices: jax.Array,
           mask: jax.Array, ok: jax.Array | bool = True) -> dict:
    """The banks after the step (momentum update at ``indices``, rows with ``mask == 0`` left
    alone), constants fixed. ``ok == False`` (a non-finite step) leaves the whole state as it was.
    """
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 - scalars only
    return {
        "mem_s": F.crd_update_memory(crd_state["mem_s"], indices, carry["emb_s"],
                                     momentum=spec.momentum, mask=mask),
        "mem_t": F.crd_update_memory(crd_state["mem_t"], indices, carry["emb_t"],
                                     momentum=spec.momentum, mask=mask),
        "z_s": keep(carry["z_s"], crd_state["z_s"]), "z_t": keep(carry["z_t"], crd_state["z_t"]),
        "ready": keep(jnp.ones((), jnp.bool_), crd_state["ready"]),
    }
