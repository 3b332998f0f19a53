"""Train state as a plain dict pytree, created directly in its sharded layout.

Keys: ``step`` (int32), ``params``, ``batch_stats`` (empty dict for models without batch norm),
``opt_state``, ``ema_params`` (empty dict when EMA is off), ``rng`` (raw uint32 key) and
``nonfinite`` (the guard's counters, see :mod:`jaxkd.core.loop`). A plain dict keeps Orbax paths
readable (``params/Dense_0/kernel``) and lets a teacher be restored from any student checkpoint
by name.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxkd.core import loop, sharding


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """``model.init`` on zeros of shape ``[1, *input_shape]`` (eval mode)."""
    return model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation,
                 input_shape: tuple[int, ...], *, ema: bool,
                 aux_init: Callable[[jax.Array], dict] | None = None
                 ) -> Callable[[jax.Array], dict]:
    """Returns ``rng -> state``; pure, so it can be ``eval_shape``d and jitted with shardings.

    ``aux_init`` (optional) creates parameters trained alongside the model but not part of it
    (feature adapters); they are stored as ``aux_params`` and the optimizer state then covers
    ``{"model": params, "aux": aux_params}``.
    """

    def init(rng: jax.Array) -> dict:
        init_rng, state_rng = jax.random.split(rng)
        variables = init_variables(model, init_rng, input_shape)
        params = variables["params"]
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params),
            "ema_params": jax.tree.map(jnp.copy, params) if ema else {},
            "rng": state_rng,
            "nonfinite": loop.init_nonfinite(),
        }
        if aux_init is not None:
            aux = aux_init(jax.random.fold_in(init_rng, 1))
            state["aux_params"] = aux
            state["opt_state"] = tx.init({"model": params, "aux": aux})
        return state

    return init


def create_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                   strategy: str) -> tuple[Callable[[], Any], Any, Any]:
    """Shapes, shardings and a builder for a state that is born sharded.

    Returns:
      ``(build, abstract, shardings)``: ``build()`` runs ``init_fn(rng)`` under ``jit`` with the
      state's output shardings (no full host copy, no resharding); ``abstract`` is the
      ``ShapeDtypeStruct`` tree with shardings (the restore target); ``shardings`` the
      ``NamedSharding`` tree for ``jit`` in/out shardings.
    """
    shapes = jax.eval_shape(init_fn, rng)
    shardings = sharding.param_shardings(shapes, mesh, strategy)
    abstract = sharding.with_shardings(shapes, shardings)
    rng = jax.device_put(rng, sharding.replicated(mesh))

    def build():
        return jax.jit(init_fn, out_shardings=shardings)(rng)

    return build, abstract, shardings
