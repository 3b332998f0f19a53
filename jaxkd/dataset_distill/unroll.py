"""Exact hypergradients through an unrolled inner optimisation, with memory flat in its length.

Trajectory matching (MTT and its family) trains a network for ``N`` steps on the synthetic set,

    theta_{i+1} = step(theta_i, hyper, aux_i),      i = 0 .. N-1,

and differentiates an outer loss ``L(theta_N)`` with respect to ``hyper`` (the synthetic images,
learnable labels and the inner learning rate). ``aux_i`` holds what is random but not learned in
step ``i`` (its minibatch indices, its augmentation key). Reverse-mode autodiff of the unrolled
program keeps every step's activations alive until the backward pass: memory grows linearly in
``N`` (the reference PyTorch code runs out of memory on 24 GiB at ``N = 80`` for a ConvNet-3 on
100 CIFAR images).

Three ways to get the same exact hypergradient (``method``):

- ``"reverse"`` (default): the forward pass is a host loop over one jitted ``step``, keeping
  only the ``N + 1`` parameter vectors ``theta_i``. The backward pass walks the steps in reverse
  with one jitted vector-Jacobian product per step, which recomputes that step's activations
  from ``theta_i``::

      lam_N = dL/dtheta_N
      (lam_i, dhyper_i) = vjp(step at (theta_i, hyper, aux_i))(lam_{i+1})
      dhyper = sum_i dhyper_i

  This is the chain rule written out, so it is exact (not an approximation such as TESLA's);
  :func:`hypergrad` is tested against ``"naive"`` to float32 round-off. Peak memory is one
  step's vector-Jacobian product plus the ``N + 1`` stored parameter vectors (1.2 MB each for
  a ConvNet-3 of width 128 on 32x32x3, against about 0.3 GiB of activations per step in the
  naive graph).
- ``"scan"``: ``lax.scan`` over a ``jax.checkpoint``-ed step inside one jitted program: the
  same arithmetic and flat memory, as one XLA program (suited to accelerators). On XLA:CPU any
  ``while`` loop around convolutions runs 10-20x slower than the same ops outside a loop
  (measured on the 2-core CI machine with jax 0.10.2), so it is not the default.
- ``"naive"``: the steps unrolled in Python inside one jitted ``value_and_grad``; memory grows
  with ``N``. The reference the others are tested and benchmarked against.

One approximate method, for comparison with the literature:

- ``"tesla"``: TESLA's two-pass gradient (Cui et al. 2023). For MTT's inner SGD,
  ``theta_N = theta_0 - sum_i alpha * g_i`` with ``g_i = grad CE(theta_i; S_i)``, and TESLA
  takes ``dtheta_N/dhyper ~ sum_i d(step_i)/dhyper`` with each ``theta_i`` held fixed: every
  step's VJP gets the same cotangent ``dL/dtheta_N`` instead of ``lam_{i+1}``. That drops the
  cross-step terms ``prod_{j>i} (I - alpha H_j)`` (``H_j`` the inner Hessian at step ``j``),
  so it is exact for ``N = 1`` or an inner loss linear in ``theta`` and biased otherwise; the
  steps no longer depend on each other, which is what let TESLA batch and discard them. It
  equals naive autodiff of the unrolled steps with ``stop_gradient`` on each step's incoming
  ``theta`` (a test); ``benchmarks/tesla_gradient.py`` measures how far it is from the exact
  gradient on real MTT draws.

Shapes: ``theta`` is a flat float vector ``[P]`` (``jax.flatten_util.ravel_pytree`` of a model's
parameters), ``hyper`` any pytree of float arrays, ``aux`` a pytree whose leaves have a leading
axis of length ``N`` (``aux_i = tree_map(lambda a: a[i], aux)``), ``ctx`` any pytree of arrays
the outer loss reads (for MTT: the expert's start and target parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, Any, Any], jax.Array]
OuterLoss = Callable[[jax.Array, Any], jax.Array]

METHODS: tuple[str, ...] = ("reverse", "scan", "naive", "tesla")

__all__ = ["METHODS", "Unroller", "compiled_bytes", "num_steps"]


def num_steps(aux: Any) -> int:
    """``N``: the common leading-axis length of ``aux``'s leaves."""
    lengths = {np.shape(a)[0] for a in jax.tree.leaves(aux)}
    if len(lengths) != 1:
        raise ValueError(f"every leaf of aux needs the same leading axis (the step count); "
                         f"got lengths {sorted(lengths)}")
    return lengths.pop()


def _index(aux: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], aux)


def compiled_bytes(jitted: Any, *args: Any) -> int:
    """Bytes XLA allocates for one call: arguments + outputs + temporaries - aliased.

    From ``jitted.lower(*args).compile().memory_analysis()``, deterministic for a given jax
    version (on CPU ``peak_memory_in_bytes`` leaves temporaries out, hence the sum).
    """
    m = jitted.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


class Unroller:
    """Hypergradients of ``outer_loss(theta_N, ctx)`` through ``N`` applications of ``step``.

    Args:
      step: ``(theta [P], hyper, aux_i) -> theta' [P]``, pure and jit-able.
      outer_loss: ``(theta_N [P], ctx) -> scalar``.
      method: one of :data:`METHODS` (see the module docstring).
    """

    def __init__(self, step: StepFn, outer_loss: OuterLoss, *, method: str = "reverse"):
        if method not in METHODS:
            raise ValueError(f"unknown hypergradient method {method!r}; valid: "
                             f"{', '.join(METHODS)}")
        self.step, self.outer_loss, self.method = step, outer_loss, method
        self._step = jax.jit(step)
        self._outer = jax.jit(jax.value_and_grad(outer_loss))
        self._step_vjp = jax.jit(self._vjp_one, donate_argnums=(3,))
        self._step_vjp_hyper = jax.jit(self._vjp_hyper)
        self._scan = jax.jit(jax.value_and_grad(self._scan_loss, argnums=1, has_aux=True))
        self._naive = jax.jit(jax.value_and_grad(self._naive_loss, argnums=1, has_aux=True))

    # -- the three forms ------------------------------------------------------------------

    def _vjp_one(self, theta, hyper, aux_i, cotangent):
        _, pullback = jax.vjp(lambda t, h: self.step(t, h, aux_i), theta, hyper)
        return pullback(cotangent)

    def _vjp_hyper(self, theta, hyper, aux_i, cotangent):
        _, pullback = jax.vjp(lambda h: self.step(theta, h, aux_i), hyper)
        return pullback(cotangent)[0]

    def _scan_loss(self, theta0, hyper, aux, ctx):
        body = jax.checkpoint(lambda t, a: self.step(t, hyper, a))
        theta_n, _ = jax.lax.scan(lambda t, a: (body(t, a), None), theta0, aux)
        return self.outer_loss(theta_n, ctx), theta_n

    def _naive_loss(self, theta0, hyper, aux, ctx):
        theta = theta0
        for i in range(num_steps(aux)):
            theta = self.step(theta, hyper, _index(aux, i))
        return self.outer_loss(theta, ctx), theta

    # -- public ---------------------------------------------------------------------------

    def trajectory(self, theta0: jax.Array, hyper: Any, aux: Any) -> list[jax.Array]:
        """``[theta_0, ..., theta_N]`` by a host loop over the jitted step (no gradients)."""
        thetas = [theta0]
        for i in range(num_steps(aux)):
            thetas.append(self._step(thetas[-1], hyper, _index(aux, i)))
        return thetas

    def value_and_grad(self, theta0: jax.Array, hyper: Any, aux: Any,
                       ctx: Any) -> tuple[jax.Array, Any, jax.Array]:
        """``(L(theta_N), dL/dhyper, theta_N)`` by ``self.method`` (exact but for ``"tesla"``)."""
        if self.method == "scan":
            (loss, theta_n), grad = self._scan(theta0, hyper, aux, ctx)
            return loss, grad, theta_n
        if self.method == "naive":
            (loss, theta_n), grad = self._naive(theta0, hyper, aux, ctx)
            return loss, grad, theta_n
        thetas = self.trajectory(theta0, hyper, aux)
        loss, cotangent = self._outer(thetas[-1], ctx)
        theta_n = thetas[-1]
        grad = jax.tree.map(jnp.zeros_like, hyper)
        if self.method == "tesla":
            for i in range(len(thetas) - 1):
                dhyper = self._step_vjp_hyper(thetas[i], hyper, _index(aux, i), cotangent)
                grad = jax.tree.map(jnp.add, grad, dhyper)
            return loss, grad, theta_n
        for i in reversed(range(len(thetas) - 1)):
            cotangent, dhyper = self._step_vjp(thetas[i], hyper, _index(aux, i), cotangent)
            grad = jax.tree.map(jnp.add, grad, dhyper)
            thetas[i + 1] = None  # release the iterate as soon as it is no longer needed
        return loss, grad, theta_n

    def memory_bytes(self, theta0: jax.Array, hyper: Any, aux: Any, ctx: Any) -> int:
        """Compiled memory of one hypergradient by ``self.method``, in bytes.

        ``"naive"`` and ``"scan"``: :func:`compiled_bytes` of their single program.
        ``"reverse"`` and ``"tesla"``: the largest of their programs (step, outer gradient,
        per-step VJP) plus the ``N`` parameter vectors held besides the one that program counts.
        """
        if self.method == "scan":
            return compiled_bytes(self._scan, theta0, hyper, aux, ctx)
        if self.method == "naive":
            return compiled_bytes(self._naive, theta0, hyper, aux, ctx)
        aux0 = _index(aux, 0)
        programs = [
            compiled_bytes(self._step, theta0, hyper, aux0),
            compiled_bytes(self._outer, theta0, ctx),
            compiled_bytes(self._step_vjp_hyper if self.method == "tesla" else self._step_vjp,
                           theta0, hyper, aux0, theta0),
        ]
        return max(programs) + num_steps(aux) * theta0.size * theta0.dtype.itemsize
