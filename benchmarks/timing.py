"""Interleaved step timing shared by the benchmarks: ratios within one run, not absolute times."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax

Run = tuple[Callable[[], Any], Callable[[Any, Any], tuple[Any, Any]], Any]  # (build, step, batch)


def median_step_times(runs: dict[str, Run], *, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each ``(build, step, batch)``, compilation excluded.

    Each state is built and stepped twice first (compilation, warm caches); then ``rounds``
    rounds time ``steps`` steps of every run in turn, so that load drift on a shared machine hits
    all runs alike.
    """
    states = {}
    for name, (build, step, batch) in runs.items():
        s = build()
        for _ in range(2):
            s, m = step(s, batch)
        jax.block_until_ready(m)
        states[name] = s
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, (_, step, batch) in runs.items():
            s = states[name]
            t = time.perf_counter()
            for _ in range(steps):
                s, m = step(s, batch)
            jax.block_until_ready((s, m))
            times[name].append((time.perf_counter() - t) / steps)
            states[name] = s
    return {k: statistics.median(v) for k, v in times.items()}
