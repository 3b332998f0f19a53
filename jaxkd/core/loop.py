"""The training loop shared by every family: resume, step, log, evaluate, checkpoint, preempt.

A family (``jaxkd.kd``, ...) builds its jitted step and evaluation functions and hands them to
:func:`fit`, which owns everything around them:

* **auto-resume**: the latest complete checkpoint in ``checkpointer`` is restored (after checking
  that it belongs to the same model), together with the input pipeline's state, so the resumed run
  is bit-identical to an uninterrupted one;
* **logging**: per-step metrics are kept on device and averaged on the host every ``log_every``
  steps (no per-step device sync), written to ``metrics.jsonl`` and TensorBoard;
* **non-finite guard**: steps compute a finiteness flag and skip their own update in-graph (see
  :func:`nonfinite_guard`); the loop reads the counter at each log and checkpoint and, unless
  ``on_nonfinite="skip"``, stops with :class:`NonFiniteError` naming the metric and step. Because the
  bad update was never applied, every checkpoint on disk holds good parameters;
* **preemption**: SIGTERM makes the loop save a checkpoint at the current step and raise
  :class:`Preempted`; the entry point turns that into a clean exit (code 143). Re-running the same
  command resumes.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core.metrics import MetricWriter
from jaxkd.core.progress import Progress

# Codes stored in the state's ``nonfinite.first_metric`` (0 = none).
NONFINITE_METRICS = {1: "loss", 2: "grad_norm", 3: "update_norm"}
PREEMPTED_EXIT_CODE = 143


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or inf."""


class Preempted(Exception):
    """SIGTERM was received; a checkpoint was saved at ``step``."""

    def __init__(self, step: int, directory: str):
        super().__init__(
            f"preempted (SIGTERM): saved a checkpoint at step {step} in {directory}; re-run the "
            f"same command to resume"
        )
        self.step = step


# ----------------------------------------------------------------------------------- preemption
class PreemptionGuard:
    """Installs a SIGTERM handler that sets a flag (main thread only); restores the old handler."""

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self, step: int) -> bool:
        """True when this run should stop and save. With several processes they agree on a step."""
        if jax.process_count() == 1:
            return self._flag.is_set()
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # preemption service not available on this runtime
            return False


# ------------------------------------------------------------------------------ non-finite guard
def init_nonfinite() -> dict[str, jax.Array]:
    return {
        "count": jnp.zeros((), jnp.int32),
        "first_step": jnp.full((), -1, jnp.int32),
        "first_metric": jnp.zeros((), jnp.int32),
    }


def nonfinite_guard(old_state: dict, new_state: dict, loss: jax.Array, grad_norm: jax.Array,
                    update_norm: jax.Array | None = None) -> dict:
    """Inside a jitted step: keep ``old_state`` (but advance step and RNG) if the step went bad.

    A step is bad when the loss, the gradient norm or the update norm is NaN or inf (the last
    catches a finite gradient times an overflowing learning rate). ``old_state`` and ``new_state``
    are train-state dicts with ``step``, ``rng`` and ``nonfinite`` entries; the returned state
    records how many steps were bad, the first bad step (1-based, like the loop's step numbers)
    and which metric was bad first.
    """
    update_norm = jnp.zeros((), jnp.float32) if update_norm is None else update_norm
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
    nf = old_state["nonfinite"]
    first = (nf["first_step"] < 0) & ~finite
    metric = jnp.where(~jnp.isfinite(loss), 1, jnp.where(~jnp.isfinite(grad_norm), 2, 3))
    metric = metric.astype(jnp.int32)
    kept["nonfinite"] = {
        "count": nf["count"] + (~finite).astype(jnp.int32),
        "first_step": jnp.where(first, old_state["step"] + 1, nf["first_step"]).astype(jnp.int32),
        "first_metric": jnp.where(first, metric, nf["first_metric"]),
    }
    kept["step"] = new_state["step"]
    kept["rng"] = new_state["rng"]
    return kept


# --------------------------------------------------------------------------------------- fit
class NoData:
    """A "pipeline" for :func:`fit` when a step draws its own data from its step number (dataset
    and diffusion distillation): yields empty batches and has no state to checkpoint."""

    def __next__(self) -> dict:
        return {}

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        del state


@dataclasses.dataclass
class LoopConfig:
    total_steps: int
    log_every: int = 50
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 500
    on_nonfinite: str = "stop"  # or "skip"
    on_nonfinite_key: str = "config.train.on_nonfinite"  # named in the error message
    progress: bool = True


def _check_nonfinite(state: dict, name: str, policy: str, last_saved: int | None,
                     directory: str, key: str = "config.train.on_nonfinite") -> int:
    nf = jax.device_get(state["nonfinite"])
    count = int(nf["count"])
    if count and policy == "stop":
        metric = NONFINITE_METRICS.get(int(nf["first_metric"]), "loss")
        saved = (f"the last good checkpoint (step {last_saved}) in {directory} is intact"
                 if last_saved is not None else "no checkpoint was written yet")
        raise NonFiniteError(
            f"[{name}] non-finite train/{metric} at step {int(nf['first_step'])}; the update was "
            f"not applied and {saved}. Lower the learning rate or set "
            f"{key}='skip' to skip such steps."
        )
    return count


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    host = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def fit(
    *,
    name: str,
    init_state: Callable[[], Any],
    abstract_state: Any,
    step_fn: Callable[[Any, dict], tuple[Any, dict]],
    pipeline: Any,
    to_global: Callable[[dict], dict],
    eval_fn: Callable[[Any], dict[str, float]] | None,
    checkpointer: ckpt_lib.Checkpointer,
    meta: dict,
    writer: MetricWriter,
    cfg: LoopConfig,
) -> tuple[Any, dict[str, float]]:
    """Trains ``state`` for ``cfg.total_steps`` steps (resuming if possible) and evaluates it.

    Args:
      name: run name, used as the metric prefix (``name/train/loss``) and in messages.
      init_state: builds the initial (sharded) state; not called when a checkpoint is restored.
      abstract_state: ``jax.ShapeDtypeStruct`` tree with shardings, the restore target.
      step_fn: jitted ``(state, global_batch) -> (state, metrics)``; state has ``step``,
        ``nonfinite``; metrics hold ``loss`` and ``grad_norm``.
      pipeline: iterator of process-local batches with ``get_state``/``set_state``.
      to_global: turns a process-local batch into global sharded arrays.
      eval_fn: ``state -> {metric: float}`` (host values), run every ``cfg.eval_every`` steps and
        at the end.
      checkpointer: where this run's checkpoints live.
      meta: JSON metadata saved with each checkpoint and checked on restore.
      writer: metric writer (disabled on non-zero processes).
      cfg: loop settings.

    Returns:
      ``(final_state, final_eval_metrics)``.
    """
    directory = checkpointer.directory
    latest = checkpointer.latest_step()
    if latest is not None:
        ckpt_lib.check_meta(checkpointer.read_meta(latest), meta, directory)
        state, data_state, _ = checkpointer.restore(latest, abstract_state)
        pipeline.set_state(data_state)
        start = int(jax.device_get(state["step"]))
    else:
        state = init_state()
        start = 0
    if start > cfg.total_steps:
        raise ckpt_lib.CheckpointMismatchError(
            f"{directory} holds step {start}, beyond this run's {cfg.total_steps} steps; use a "
            f"fresh --workdir or delete {directory}"
        )
    last_saved = latest
    is_main = jax.process_index() == 0

    def save(step):
        nonlocal last_saved
        _check_nonfinite(state, name, cfg.on_nonfinite, last_saved, directory,
                         cfg.on_nonfinite_key)
        if last_saved != step:
            checkpointer.save(step, state, data=pipeline.get_state(), meta=meta)
            last_saved = step

    eval_metrics: dict[str, float] = {}
    history: list[dict] = []
    t_log = time.perf_counter()
    with PreemptionGuard() as guard, Progress(
        cfg.total_steps, initial=start, desc=name, enabled=cfg.progress and is_main
    ) as bar:
        for step in range(start + 1, cfg.total_steps + 1):
            batch = to_global(next(pipeline))
            state, metrics = step_fn(state, batch)
            history.append(metrics)
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                count = _check_nonfinite(state, name, cfg.on_nonfinite, last_saved, directory,
                                         cfg.on_nonfinite_key)
                scalars = _mean_metrics(history)
                now = time.perf_counter()
                scalars["steps_per_s"] = len(history) / max(now - t_log, 1e-9)
                if count:
                    scalars["skipped_steps"] = float(count)
                t_log = now
                history = []
                writer.write_scalars(step, scalars, prefix=f"{name}/train")
                bar.update(step, **{k: scalars[k] for k in ("loss", "acc") if k in scalars})
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                    and step != cfg.total_steps:
                writer.write_scalars(step, eval_fn(state), prefix=f"{name}/eval")
            if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                save(step)
            if guard.requested(step):
                save(step)
                checkpointer.wait()
                writer.flush()
                raise Preempted(step, directory)
    checkpointer.wait()
    if eval_fn is not None:
        eval_metrics = eval_fn(state)
        writer.write_scalars(cfg.total_steps, eval_metrics, prefix=f"{name}/eval")
    writer.flush()
    return state, eval_metrics

