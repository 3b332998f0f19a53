"""Metric writing: one JSON line per call in ``<logdir>/metrics.jsonl`` plus TensorBoard events.

    with MetricWriter(workdir, enabled=jax.process_index() == 0) as writer:
        writer.write_scalars(step, {"loss": loss, "acc": acc}, prefix="train")

``metrics.jsonl`` holds ``{"step": 100, "train/loss": 0.41, "train/acc": 0.95, "time": 1.7e9}``
per line. It is strict JSON: non-finite values are written as the strings ``"nan"``, ``"inf"``
and ``"-inf"`` (``read_metrics`` turns them back into floats). Each line is handed to the OS
in one write as soon as it is written, so a killed process loses at most the line being
written; reopening the same logdir (a resumed run) appends, after dropping such a torn line.

TensorBoard event files go to ``<logdir>/tensorboard/`` through ``tensorboardX`` (no
TensorFlow needed); each writer opens a new event file there, which TensorBoard merges.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxkd.core.report import encode_float, from_json_compatible

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricWriter", "read_metrics", "series"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")


class MetricWriter:
    """Writes scalar metrics to ``<logdir>/metrics.jsonl`` and TensorBoard.

    Args:
        logdir: the directory to write to (created if missing); usually the workdir.
        enabled: False makes every method a no-op that creates no files; pass
            ``jax.process_index() == 0`` so only one process of a multi-host run writes.
        tensorboard: also write TensorBoard event files under ``<logdir>/tensorboard/``.
    """

    def __init__(
        self, logdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True
    ):
        self.logdir = os.fspath(logdir)
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(self.logdir, exist_ok=True)
        path = os.path.join(self.logdir, METRICS_FILE)
        _repair_torn_last_line(path)
        self._file = open(path, "ab", buffering=0)  # Unbuffered: each line is one write(2).
        if tensorboard:
            from tensorboardX import SummaryWriter

            # A unique suffix: two writers started in the same second on one host (a quick
            # restart) would otherwise share a file name and the second would truncate it.
            self._tb = SummaryWriter(
                os.path.join(self.logdir, TENSORBOARD_DIR),
                flush_secs=30,
                filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}",
            )

    def write_scalars(
        self,
        step: int,
        scalars: Mapping[str, float | np.ndarray | jax.Array],
        *,
        prefix: str = "",
    ) -> None:
        """Appends one line ``{"step": step, "<prefix>/<key>": value, ..., "time": unix_time}``.

        Values may be Python or NumPy numbers or 0-d (or size-1) JAX arrays; JAX arrays are
        fetched together with one ``jax.device_get``.

        Raises:
            ValueError: if a value has more than one element, or a key is "step" or "time".
            RuntimeError: if the writer was closed.
        """
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricWriter({self.logdir!r}) is closed")
        step = int(step)
        values = {}
        keys = list(scalars)
        fetched = jax.device_get([scalars[k] for k in keys])  # A list keeps the keys' order.
        for key, value in zip(keys, fetched):
            name = f"{prefix.rstrip('/')}/{key}" if prefix else str(key)
            if name in _RESERVED:
                raise ValueError(f"metric name {name!r} is reserved; use another name or a prefix")
            array = np.asarray(value)
            if array.size != 1:
                raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
            values[name] = float(array.reshape(()))
        now = time.time()
        record = {"step": step, **{k: encode_float(v) for k, v in values.items()}, "time": now}
        data = memoryview((json.dumps(record, allow_nan=False) + "\n").encode("utf-8"))
        while data:  # A raw write may be partial (e.g. interrupted); finish the line.
            data = data[self._file.write(data) :]
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, global_step=step, walltime=now)

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk (JSONL lines are never held back)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files; further ``write_scalars`` calls raise. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads ``metrics.jsonl`` (or ``<path>/metrics.jsonl`` if ``path`` is a directory).

    A last line without its newline (cut short when the writer was killed) is skipped if it is
    not valid JSON; a broken line anywhere else raises ValueError. ``"nan"``/``"inf"``/
    ``"-inf"`` values come back as floats.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # After split, lines[-1] is "" if the file ends with a newline, else the unfinished line.
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(from_json_compatible(json.loads(line)))
        except json.JSONDecodeError as e:
            if number == len(lines):  # Unterminated last line: a torn write.
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
    return records


def series(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` for the records that have ``key``, e.g. for ``plot_curves``."""
    return [(int(r["step"]), float(r[key])) for r in records if key in r]


def _repair_torn_last_line(path: str) -> None:
    """Makes a file that a killed writer left without a final newline safe to append to.

    A complete JSON line that only lacks its newline gets one; a partial line is cut off
    (it was lost when the writer died). Without this the next line would be glued to it.
    """
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the start of the last line.
        chunk_start = size
        tail = b""
        while chunk_start > 0 and b"\n" not in tail:
            chunk_start = max(0, chunk_start - 65536)
            f.seek(chunk_start)
            tail = f.read(size - chunk_start)
        line_start = chunk_start + tail.rfind(b"\n") + 1
        f.seek(line_start)
        last = f.read()
        try:
            json.loads(last.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            f.truncate(line_start)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
