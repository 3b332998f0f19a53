"""Orbax checkpoints: train state + data iterator state + metadata, atomic, auto-resumable.

A checkpoint directory holds numbered steps, each with three items:

* ``state``: the train state pytree (params, optimizer state, step, RNG, ...), sharded arrays
  written by every process (Orbax handles multi-host writes);
* ``data``: the input pipeline's state (JSON), so a resumed run sees exactly the batches an
  uninterrupted run would;
* ``meta``: JSON describing what was trained (model name and arguments, number of classes, parameter
  shapes), used to refuse resuming a different model into this directory and to rebuild a teacher.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed at
any moment leaves the previous complete step intact; :meth:`Checkpointer.latest_step` only ever
sees complete steps.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The checkpoint in a directory was written for a different model or config."""


class Checkpointer:
    """Thin wrapper around :class:`orbax.checkpoint.CheckpointManager` with our three items."""

    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        # ``read_only`` here only means "do not create the directory": Orbax's own read_only mode
        # logs three warnings per open, and we never call save() on a reader.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, *, data: dict, meta: dict) -> None:
        """Starts saving ``step`` (asynchronously when enabled); returns once arrays are copied."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                data=ocp.args.JsonSave(data),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores ``step`` into arrays with the shapes, dtypes and shardings of ``abstract_state``."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], dict(out["data"]), dict(out["meta"])

    def restore_raw(self, step: int | None = None) -> Any:
        """The ``state`` item as stored, as host NumPy arrays (for inspection and tests: there is
        no sharding target, so use it only for states that fit in one host's memory)."""
        step = self.latest_step() if step is None else step
        tree = self._manager.item_metadata(step)["state"].tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=restore_args)))
        return out["state"]

    def restore_subtree(self, step: int, abstract_subtree: dict) -> dict:
        """Restores only the top-level entries of ``state`` named in ``abstract_subtree``."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract_subtree, restore_args=restore_args, partial_restore=True
                )
            ),
        )
        return out["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shapes_signature(tree: Any) -> dict[str, list[int]]:
    """``{"path/to/leaf": shape}`` for a pytree; stored in ``meta`` to detect mismatches."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): list(np.shape(x)) for path, x in flat}


def check_meta(found: dict, expected: dict, directory: str,
               keys=("model", "model_kwargs", "num_classes", "teacher_sha256",
                     "teacher_cache", "distill")) -> None:
    """Raises :class:`CheckpointMismatchError` if ``found`` differs from ``expected`` on ``keys``
    (tuples and lists compare equal: the saved metadata went through JSON)."""
    found, expected = _lists(found), _lists(expected)
    diffs = [k for k in keys if found.get(k) != expected.get(k)]
    if not diffs and found.get("param_shapes") != expected.get("param_shapes"):
        diffs = ["param_shapes"]
    if diffs:
        detail = "; ".join(_describe_diff(k, found.get(k), expected.get(k))
                           for k in diffs if k != "param_shapes")
        if "param_shapes" in diffs:
            detail = detail or "parameter shapes differ"
        raise CheckpointMismatchError(
            f"{directory} holds a checkpoint that does not match this config ({detail}). Use a fresh "
            f"--workdir, or delete {directory} to start this run over."
        )


def _lists(obj: Any) -> Any:
    """``obj`` with every tuple (at any depth, inside dicts and lists) turned into a list."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def _describe_diff(key: str, found: Any, expected: Any) -> str:
    """``key.a.b: checkpoint has X, config asks for Y`` for each differing leaf of two dicts."""
    if isinstance(found, dict) and isinstance(expected, dict):
        parts = [_describe_diff(f"{key}.{k}", found.get(k), expected.get(k))
                 for k in sorted(set(found) | set(expected), key=str)
                 if found.get(k) != expected.get(k)]
        return "; ".join(parts)
    return f"{key}: checkpoint has {found!r}, config asks for {expected!r}"


def params_hash(tree: Any) -> str:
    """SHA-256 of a pytree's leaf values (tree order, dtype and shape included), hex digest."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, x in flat:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            x = multihost_utils.process_allgather(x, tiled=True)
        a = np.asarray(x)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
