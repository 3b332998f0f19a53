"""Results a person reads: paste-able tables, mean +- std over seeds, results.json, PNG curves.

JSON policy (shared with ``jaxkd.core.metrics``): files are strict JSON (``allow_nan=False``),
so non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``;
``from_json_compatible`` turns them back into floats.

Plots use ``matplotlib.figure.Figure`` with the Agg canvas directly, never ``pyplot``, so they
neither need a display nor change the backend of a user's interactive session.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "encode_float",
    "fmt_mean_std",
    "format_table",
    "from_json_compatible",
    "mean_std",
    "plot_curves",
    "to_json_compatible",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_results",
]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------------------------------
# JSON.


def encode_float(value: float) -> float | str:
    """``value`` as a float, or ``"nan"``/``"inf"``/``"-inf"`` when it is not finite."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_json_compatible(obj: Any, *, _where: str = "$") -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Mappings and ``ml_collections.ConfigDict`` (anything with ``to_dict()``) become dicts (keys
    must be str, int, float, bool or None, as in ``json``), tuples and lists become lists,
    NumPy/JAX scalars and arrays become Python numbers and (nested) lists, and non-finite floats
    become ``"nan"``/``"inf"``/``"-inf"``.

    Raises:
        TypeError: for anything else, naming where in ``obj`` it was found.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return encode_float(obj)
    if not isinstance(obj, Mapping) and callable(getattr(obj, "to_dict", None)):
        obj = obj.to_dict()  # ml_collections.ConfigDict / FrozenConfigDict.
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"JSON keys must be str, not {type(key).__name__} at {_where}")
            out[key] = to_json_compatible(value, _where=f"{_where}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json_compatible(v, _where=f"{_where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "__array__") and hasattr(obj, "dtype"):  # NumPy or JAX arrays and scalars.
        array = np.asarray(obj)
        if array.dtype.kind in "biuf":
            return to_json_compatible(array.tolist(), _where=_where)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON (at {_where})")


def from_json_compatible(obj: Any) -> Any:
    """Inverse of ``to_json_compatible`` for floats: ``"nan"``/``"inf"``/``"-inf"`` -> float."""
    if isinstance(obj, str):
        return _NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_json_compatible(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_compatible(v) for v in obj]
    return obj


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so readers see the old file or the new one, never a part.

    Writes a temporary file in the same directory, fsyncs it and ``os.replace``s it onto
    ``path``. Creates missing parent directories. The file gets the usual umask permissions.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """Writes ``arrays`` as an uncompressed ``.npz`` (``np.savez``), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    """Writes ``obj`` as indented strict JSON, atomically (see ``to_json_compatible``)."""
    text = json.dumps(to_json_compatible(obj), indent=2, sort_keys=sort_keys, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def write_results(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Writes the final metrics of a run to ``path`` (``results.json``): flat, sorted, strict.

    Values must be numbers (Python, NumPy or 0-d JAX arrays); non-finite ones are written as
    ``"nan"``/``"inf"``/``"-inf"`` so a diverged run is still recorded.
    """
    flat = {}
    for key, value in results.items():
        if not isinstance(key, str):
            raise TypeError(f"results keys must be str, got {key!r}")
        if not _is_number(value):
            raise TypeError(f"results[{key!r}] must be a scalar number, got {value!r}")
        flat[key] = value
    write_json_atomic(path, flat, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Tables and seeds.


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (``ddof=1``) of ``values``; std is 0.0 for n == 1.

    Sample std is what papers report over a handful of seeds: it does not understate the spread
    the way the population std does for small n.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(array, ddof=1)) if array.size > 1 else 0.0
    return float(np.mean(array)), std


def fmt_mean_std(values: Sequence[float], digits: int = 2, scale: float = 100.0) -> str:
    """``"97.31 +- 0.42"`` for accuracies in [0, 1] over seeds (values are multiplied by ``scale``).

    With a single value there is no spread to report, so only the value is shown (``"97.31"``).
    """
    mean, std = mean_std(values)
    n = np.asarray(values).size
    if n == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} +- {std * scale:.{digits}f}"


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    floatfmt: str = ".4f",
) -> str:
    """Rows as a GitHub-markdown pipe table, padded so it is also aligned as plain text.

    Args:
        rows: one mapping per row. Missing entries are left blank.
        columns: the columns, in order; by default every key, in order of first appearance.
        title: an optional line printed above the table (followed by a blank line).
        floatfmt: format spec for floats (ints and strings are printed as they are).

    Number columns are right-aligned (``---:``), others left-aligned. ``|`` in cells is escaped.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError("format_table needs at least one column")

    cells = [[_format_cell(row.get(col), floatfmt) for col in columns] for row in rows]
    numeric = [
        any(row.get(col) is not None for row in rows)
        and all(row.get(col) is None or _is_number(row.get(col)) for row in rows)
        for col in columns
    ]
    header = [_escape(c) for c in columns]
    widths = [
        max(3, len(header[j]), *(len(r[j]) for r in cells)) for j in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(
        ("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)
    ) + " |"
    lines = [line(header), rule, *(line(r) for r in cells)]
    if title:
        lines = [title, "", *lines]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return hasattr(value, "dtype") and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iuf"


def _format_cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if _is_number(value):
        value = np.asarray(value).item() if hasattr(value, "dtype") else value
        if isinstance(value, numbers.Integral):
            return str(int(value))
        value = float(value)
        return format(value, floatfmt) if math.isfinite(value) else str(value)
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Plots.


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Sequence[Any]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    bands: bool = True,
    logy: bool = False,
) -> None:
    """Draws curves into a PNG at ``path`` (written atomically).

    Args:
        path: the PNG file to write.
        curves: ``name -> series`` or ``name -> [series, series, ...]`` (one per seed), where a
            series is a sequence of ``(step, value)`` pairs (e.g. ``metrics.series(...)``).
            Several series are drawn as their mean, labelled ``name (n=3)``; they are averaged
            at the steps that all of them have (a seed that stopped early shortens the curve).
        title, xlabel, ylabel: text on the figure.
        bands: shade mean +- one sample std (``ddof=1``, as in ``mean_std``) around averaged
            curves.
        logy: use a log scale for the values.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, entry in curves.items():
        runs = _as_runs(name, entry)
        if len(runs) == 1:
            steps, values = runs[0]
            ax.plot(steps, values, label=name)
            continue
        steps, stacked = _align(name, runs)
        mean = stacked.mean(axis=0)
        (line,) = ax.plot(steps, mean, label=f"{name} (n={len(runs)})")
        if bands:
            std = stacked.std(axis=0, ddof=1)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())


def _as_runs(name: str, entry: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(steps, values)`` pair per series in a ``plot_curves`` entry."""
    if len(entry) == 0:
        raise ValueError(f"curve {name!r} is empty")
    single = np.ndim(entry[0]) == 1  # entry[0] is a (step, value) pair, not a series.
    runs = []
    for series in [entry] if single else entry:
        array = np.asarray(series, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
            raise ValueError(
                f"curve {name!r}: a series must be a non-empty sequence of (step, value) pairs"
            )
        runs.append((array[:, 0], array[:, 1]))
    return runs


def _align(name: str, runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps common to all runs, and a ``[n_runs, n_steps]`` array of their values there."""
    common = runs[0][0]
    for steps, _ in runs[1:]:
        common = np.intersect1d(common, steps)
    if common.size == 0:
        raise ValueError(f"curve {name!r}: its {len(runs)} series share no steps to average over")
    stacked = []
    for steps, values in runs:
        last = {s: v for s, v in zip(steps.tolist(), values.tolist())}  # last value per step.
        stacked.append([last[s] for s in common.tolist()])
    return common, np.asarray(stacked)
