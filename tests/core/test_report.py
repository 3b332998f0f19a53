"""Tests for jaxkd.core.report: tables, mean +- std, atomic strict JSON files and PNG plots."""

import json
import math
import os
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.core import report
from jaxkd.core.report import (
    fmt_mean_std,
    format_table,
    from_json_compatible,
    mean_std,
    plot_curves,
    to_json_compatible,
    write_json_atomic,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _strict_load(path):
    def reject(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    with open(path) as f:
        return json.load(f, parse_constant=reject)


# ---------------------------------------------------------------------------------------------
# Tables.


def test_format_table_is_an_aligned_markdown_table():
    rows = [
        {"method": "KD", "acc": 0.97312, "seeds": 3},
        {"method": "DKD (ours)", "acc": np.float32(0.5), "seeds": np.int64(10), "note": "a|b"},
    ]
    table = format_table(rows, title="Digits")
    lines = table.splitlines()
    assert lines[:2] == ["Digits", ""]
    header, rule, *body = lines[2:]
    assert header == "| method     |    acc | seeds | note |"  # Number columns align right.
    assert rule == "| ---------- | -----: | ----: | ---- |"
    assert body == [
        "| KD         | 0.9731 |     3 |      |",
        "| DKD (ours) | 0.5000 |    10 | a\\|b |",
    ]
    assert len({len(line) for line in lines[2:]}) == 1  # Aligned as plain text too.


def test_format_table_columns_floatfmt_and_special_values():
    rows = [{"a": 1.5, "b": "x", "c": float("nan")}, {"a": jnp.float32(2.25), "b": None}]
    table = format_table(rows, columns=["c", "a"], floatfmt=".1f")
    assert table.splitlines() == [
        "|   c |   a |",
        "| --: | --: |",
        "| nan | 1.5 |",
        "|     | 2.2 |",
    ]
    with pytest.raises(ValueError):
        format_table([])


# ---------------------------------------------------------------------------------------------
# Seeds.


@pytest.mark.parametrize("values", [[0.9], [0.9, 0.95], [0.97, 0.975, 0.968, 0.99]])
def test_mean_std_is_mean_and_sample_std(values):
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    expected = np.std(values, ddof=1) if len(values) > 1 else 0.0
    assert std == pytest.approx(expected)
    assert isinstance(mean, float) and isinstance(std, float)


def test_mean_std_known_values():
    # Sample std of (1, 2, 3, 4) is sqrt(5/3); the population std would be sqrt(5/4).
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    with pytest.raises(ValueError):
        mean_std([])


def test_fmt_mean_std():
    assert fmt_mean_std([0.9731, 0.9689, 0.9773]) == "97.31 +- 0.42"
    assert fmt_mean_std([0.5]) == "50.00"
    assert fmt_mean_std([1.0, 3.0], digits=1, scale=1.0) == "2.0 +- 1.4"


# ---------------------------------------------------------------------------------------------
# JSON files.


def test_write_results_is_flat_sorted_and_strict(tmp_path):
    path = tmp_path / "out" / "results.json"  # The directory is created.
    write_results(path, {"test/acc": jnp.float32(0.5), "b": 2, "a": np.float64(np.nan)})
    text = path.read_text()
    assert list(_strict_load(path)) == ["a", "b", "test/acc"]
    assert _strict_load(path) == {"a": "nan", "b": 2, "test/acc": 0.5}
    assert from_json_compatible(json.loads(text))["test/acc"] == 0.5
    assert os.listdir(path.parent) == ["results.json"]  # No temporary file left behind.
    with pytest.raises(TypeError):
        write_results(path, {"acc": np.ones(2)})
    with pytest.raises(TypeError):
        write_results(path, {"acc": "high"})


def test_write_json_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "config.json"
    write_json_atomic(path, {"model": {"name": "mlp", "widths": (64, 32)}, "lr": 1e-3})
    assert _strict_load(path) == {"model": {"name": "mlp", "widths": [64, 32]}, "lr": 1e-3}
    with pytest.raises(TypeError, match=r"\$\.model\.fn"):
        write_json_atomic(path, {"model": {"fn": print}})
    assert _strict_load(path)["lr"] == 1e-3
    assert os.listdir(tmp_path) == ["config.json"]


def test_write_is_atomic_when_interrupted_during_replace(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_results(path, {"acc": 0.5})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_results(path, {"acc": 0.9})
    assert _strict_load(path) == {"acc": 0.5}
    assert os.listdir(tmp_path) == ["results.json"]


def test_write_json_atomic_accepts_a_config_dict(tmp_path):
    import ml_collections

    config = ml_collections.ConfigDict({"model": {"name": "mlp", "widths": (64, 32)}, "lr": 0.1})
    write_json_atomic(tmp_path / "config.json", config)
    assert _strict_load(tmp_path / "config.json") == config.to_dict() | {
        "model": {"name": "mlp", "widths": [64, 32]}
    }
    write_json_atomic(tmp_path / "frozen.json", ml_collections.FrozenConfigDict(config))
    assert _strict_load(tmp_path / "frozen.json") == _strict_load(tmp_path / "config.json")


def test_to_json_compatible_round_trip():
    obj = {"x": np.array([1.0, np.inf]), "y": jnp.arange(2), "z": (np.int32(1), None, True)}
    encoded = to_json_compatible(obj)
    json.dumps(encoded, allow_nan=False)
    assert encoded == {"x": [1.0, "inf"], "y": [0, 1], "z": [1, None, True]}
    assert from_json_compatible(encoded)["x"] == [1.0, math.inf]


# ---------------------------------------------------------------------------------------------
# Plots.


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_curves_single_and_seeds(tmp_path):
    path = tmp_path / "plots" / "acc.png"
    steps = np.arange(0, 100, 10)
    seeds = [[(s, 0.5 + 0.004 * s + 0.01 * k) for s in steps] for k in range(3)]
    seeds[2] = seeds[2][:-2]  # A seed that stopped early.
    plot_curves(
        path,
        {"kd": seeds, "ce": [(s, 0.4 + 0.003 * s) for s in steps], "array": np.ones((5, 2))},
        title="test accuracy",
        ylabel="acc",
    )
    width, height = _png_size(path)
    assert width > 300 and height > 200
    assert path.stat().st_size > 5000
    assert os.listdir(path.parent) == ["acc.png"]


def test_plot_curves_labels_and_bands(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def capture(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    seeds = [[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, 4.0)], [(0, 2.0), (1, 3.0)]]
    plot_curves(tmp_path / "c.png", {"kd": seeds, "ce": [(0, 1.0), (1, 1.0)]}, logy=True)
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kd (n=3)", "ce"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, 3.0])
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(4.0)  # mean +- std 1.
    assert ax.get_yscale() == "log"


def test_plot_curves_does_not_import_pyplot(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "from jaxkd.core.report import plot_curves\n"
        "raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend')  # Without resolving.\n"
        "backend = raw()\n"
        f"plot_curves({str(tmp_path / 'c.png')!r}, {{'a': [(0, 1.0), (1, 0.5)]}})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert raw() == backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_curves(tmp_path / "c.png", {"a": []})
    with pytest.raises(ValueError, match="share no steps"):
        plot_curves(tmp_path / "c.png", {"a": [[(0, 1.0)], [(1, 1.0)]]})
    with pytest.raises(ValueError, match="pairs"):
        plot_curves(tmp_path / "c.png", {"a": [(0, 1.0, 2.0)]})
