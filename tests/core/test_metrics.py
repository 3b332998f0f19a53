"""Tests for jaxkd.core.metrics (JSONL + TensorBoard) and jaxkd.core.progress (log lines).

The progress tests live here too: both modules are what a training loop reports through.
"""

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.core import progress as progress_lib
from jaxkd.core.metrics import MetricWriter, read_metrics, series
from jaxkd.core.progress import Progress


def _strict_loads(line):
    def reject(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(line, parse_constant=reject)


def _read_event_file(path):
    """Events in a TFRecord file: [len u64][masked crc32c of len][data][masked crc32c of data]."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    events = []
    with open(path, "rb") as f:
        while header := f.read(8):
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", f.read(4))
            assert length_crc == masked_crc32c(header)
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(4))
            assert data_crc == masked_crc32c(data)
            event = event_pb2.Event()
            event.ParseFromString(data)
            events.append(event)
    return events


def _tb_scalars(logdir):
    """``tag -> [(step, value), ...]`` over all event files, in order of wall time."""
    found = {}
    for path in glob.glob(os.path.join(logdir, "tensorboard", "events.out.tfevents.*")):
        for event in _read_event_file(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.wall_time, event.step, value.simple_value)
                )
    return {tag: [(step, v) for _, step, v in sorted(items)] for tag, items in found.items()}


# ---------------------------------------------------------------------------------------------
# MetricWriter.


def test_jsonl_lines_are_strict_json_with_prefixes_and_types(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write_scalars(
            1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25), "n": 3}, prefix="train"
        )
        writer.write_scalars(jnp.int32(2), {"acc": jnp.array([0.75])}, prefix="eval/")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [_strict_loads(line) for line in lines]
    assert list(records[0]) == ["step", "train/loss", "train/acc", "train/n", "time"]
    assert records[0]["step"] == 1 and records[0]["train/loss"] == 0.5
    assert records[0]["train/n"] == 3.0 and isinstance(records[0]["train/n"], float)
    assert records[1]["step"] == 2 and records[1]["eval/acc"] == 0.75
    assert abs(records[1]["time"] - records[0]["time"]) < 60


def test_non_finite_values_are_strings_and_read_back_as_floats(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write_scalars(5, {"a": float("nan"), "b": jnp.inf, "c": -np.inf, "d": 1.0})
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = _strict_loads(line)
    assert (record["a"], record["b"], record["c"], record["d"]) == ("nan", "inf", "-inf", 1.0)
    (back,) = read_metrics(tmp_path)
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf


def test_tensorboard_events_are_written_and_readable(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 2.0}, prefix="train")
        writer.write_scalars(2, {"loss": 1.5, "nan": float("nan")}, prefix="train")
    files = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert len(files) == 1 and os.path.getsize(files[0]) > 0
    scalars = _tb_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.5)]
    assert math.isnan(scalars["train/nan"][0][1])


def test_reopening_appends(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    with MetricWriter(tmp_path) as writer:  # A resumed run, possibly within the same second.
        writer.write_scalars(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert _tb_scalars(tmp_path)["loss"] == [(1, 1.0), (2, 0.5)]


def test_read_metrics_skips_a_torn_last_line_and_writer_repairs_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.write_scalars(2, {"loss": 0.9})
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 10])  # Killed in the middle of writing line 2.
    assert [r["step"] for r in read_metrics(path)] == [1]

    with MetricWriter(tmp_path, tensorboard=False) as writer:  # Resume: the torn part goes.
        writer.write_scalars(2, {"loss": 0.8})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.8)]
    for line in path.read_text().splitlines():
        _strict_loads(line)


def test_complete_line_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0, "time": 0}')
    assert read_metrics(path) == [{"step": 1, "loss": 1.0, "time": 0}]
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write_scalars(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_read_metrics_rejects_a_broken_line_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics(path)


def test_disabled_writer_writes_nothing(tmp_path):
    logdir = tmp_path / "logs"
    with MetricWriter(logdir, enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.flush()
    assert not logdir.exists()


def test_errors(tmp_path):
    writer = MetricWriter(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="scalar"):
        writer.write_scalars(1, {"loss": np.ones(3)})
    with pytest.raises(ValueError, match="reserved"):
        writer.write_scalars(1, {"step": 1.0})
    writer.close()
    writer.close()  # Idempotent.
    with pytest.raises(RuntimeError, match="closed"):
        writer.write_scalars(1, {"loss": 1.0})


def test_series(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write_scalars(1, {"loss": 1.0}, prefix="train")
        writer.write_scalars(1, {"acc": 0.5}, prefix="eval")
        writer.write_scalars(2, {"loss": 0.5}, prefix="train")
    records = read_metrics(tmp_path)
    assert series(records, "train/loss") == [(1, 1.0), (2, 0.5)]
    assert series(records, "eval/acc") == [(1, 0.5)]


# ---------------------------------------------------------------------------------------------
# Progress (plain lines when the stream is not a terminal).


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", fake)
    return fake


def test_plain_lines_format_rate_limit_and_final_step(clock):
    stream = io.StringIO()
    progress = Progress(2000, desc="kd/seed0", stream=stream, min_interval_s=8.0)
    clock.now += 5.0  # Compilation.
    progress.update(1, loss=jnp.float32(2.5), acc=0.1)
    for step in range(2, 2001):
        clock.now += 1 / 128  # 128 steps/s, exact in binary.
        progress.update(step, loss=0.4123, acc=np.float32(0.95125))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "[kd/seed0] step 1/2000 (0%) loss=2.5000 acc=0.1000 (first update after 5.0s)"
    )
    # One line per 8 s of 128 steps/s = every 1024 steps, then the final step.
    assert lines[1] == (
        "[kd/seed0] step 1025/2000 (51%) 128.0 step/s loss=0.4123 acc=0.9513 eta 7.6s"
    )
    assert lines[2] == (
        "[kd/seed0] step 2000/2000 (100%) 128.0 step/s loss=0.4123 acc=0.9513 done in 21s"
    )
    assert len(lines) == 3


def test_plain_lines_with_initial_and_batch_size(clock):
    stream = io.StringIO()
    with Progress(
        300, initial=100, stream=stream, min_interval_s=1.0, batch_size=64, unit="it"
    ) as progress:
        clock.now += 100.0  # Restoring and compiling: not part of any rate.
        progress.update(101)
        for step in range(102, 301):
            clock.now += 1 / 16  # 16 it/s.
            progress.update(step, lr=1e-5)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "it 101/300 (33%) (first update after 1m40s)"
    assert lines[1] == "it 117/300 (39%) 16.00 it/s 1024 ex/s lr=1.000e-05 eta 11s"
    assert lines[2].startswith("it 133/300 (44%) 16.00 it/s")
    assert lines[-1] == "it 300/300 (100%) 16.00 it/s 1024 ex/s lr=1.000e-05 done in 1m52s"
    assert len(lines) == 2 + (300 - 117) // 16 + 1


def test_close_shows_an_unshown_last_update_once(clock):
    stream = io.StringIO()
    progress = Progress(100, stream=stream)
    progress.update(1)
    clock.now += 1.0
    progress.update(50, loss=0.5)  # Within min_interval_s of the first line: not shown yet.
    progress.close()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1] == "step 50/100 (50%) 49.00 step/s loss=0.5000 stopped after 1.0s"


def test_percent_rounds_down(clock):
    stream = io.StringIO()
    with Progress(2000, stream=stream, min_interval_s=0.0) as progress:
        progress.update(1999)
    assert "step 1999/2000 (99%)" in stream.getvalue()


def test_final_step_is_printed_even_right_after_another_line(clock):
    stream = io.StringIO()
    with Progress(3, stream=stream) as progress:
        for step in (1, 2, 3):
            clock.now += 0.001
            progress.update(step)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/3", "3/3"]


def test_disabled_progress_prints_nothing(clock):
    stream = io.StringIO()
    with Progress(10, stream=stream, enabled=False) as progress:
        for step in range(1, 11):
            progress.update(step, loss=1.0)
        progress.write("eval")
    assert stream.getvalue() == ""


def test_write_prints_a_line():
    stream = io.StringIO()
    with Progress(10, stream=stream) as progress:
        progress.write("eval acc=0.91")
    assert stream.getvalue() == "eval acc=0.91\n"


def test_tty_uses_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(20, desc="kd", stream=stream, min_interval_s=0.0, batch_size=8) as progress:
        for step in range(1, 21):
            progress.update(step, loss=0.25)
    text = stream.getvalue()
    assert "\r" in text and "kd: 100%" in text and "20/20" in text and "loss=0.2500" in text
