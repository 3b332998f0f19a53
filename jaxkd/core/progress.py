"""A progress display for loops a person waits for.

    with Progress(total_steps, initial=start_step, desc="kd/seed0", batch_size=128) as progress:
        for step in range(start_step + 1, total_steps + 1):
            metrics = train_step(...)
            progress.update(step, loss=metrics["loss"], acc=metrics["acc"])

On a terminal this is a tqdm bar with steps/s (and examples/s given ``batch_size``) and the
postfix metrics. Elsewhere (CI, log files, ``nohup``) it prints plain lines, at most one per
``min_interval_s`` plus the first and the final step:

    [kd/seed0] step 1/2000 (0%) loss=2.3026 acc=0.1016 (first update after 8.2s)
    [kd/seed0] step 500/2000 (25%) 812.3 step/s loss=0.4123 acc=0.9512 eta 2s
    [kd/seed0] step 2000/2000 (100%) 805.1 step/s loss=0.1021 acc=0.9812 done in 11s

Rates count only the steps done by this process (``initial`` is where a resumed run starts).
A plain line's rate covers the time since the previous line, so the first line, whose time is
mostly compilation, shows how long the first update took instead; the final line shows the
mean rate after the first update. Postfix values may be device arrays: they are converted
(which waits for the device) only when a line or the bar is actually redrawn.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]

_TTY_MIN_INTERVAL_S = 0.5
_PLAIN_MIN_INTERVAL_S = 10.0


class Progress:
    """Progress of a loop over steps ``initial + 1 .. total``.

    Args:
        total: the last step.
        initial: the step the loop starts after (a resumed run's restored step).
        desc: a short run name shown at the start of each line, e.g. ``"kd/seed0"``.
        unit: what a step is called (``"step"``, ``"epoch"``, ``"image"``).
        enabled: False prints nothing (pass ``jax.process_index() == 0``).
        stream: where to print; ``sys.stderr`` by default.
        min_interval_s: least time between redraws: by default 0.5 s on a terminal and 10 s
            for plain lines.
        batch_size: examples per step; adds examples/s to the display.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "step",
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval_s: float | None = None,
        batch_size: int | None = None,
    ):
        self.total = int(total)
        self.initial = int(initial)
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.batch_size = batch_size
        self._stream = sys.stderr if stream is None else stream
        self._tty = enabled and _isatty(self._stream)
        if min_interval_s is None:
            min_interval_s = _TTY_MIN_INTERVAL_S if self._tty else _PLAIN_MIN_INTERVAL_S
        self.min_interval_s = float(min_interval_s)

        self._start = time.monotonic()
        self._step = self.initial
        self._postfix: dict[str, Any] = {}
        self._first: tuple[int, float] | None = None  # (step, time) of the first update.
        self._last_print: tuple[int, float] = (self.initial, self._start)  # Or last redraw.
        self._shown_any = False
        self._pending = False  # An update not shown yet.
        self._closed = False
        self._bar = None
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=desc or None,
                unit=unit,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=self.min_interval_s,
            )

    def update(self, step: int, **postfix: Any) -> None:
        """Records that ``step`` (absolute, not an increment) is done, with metrics to show."""
        if not self.enabled or self._closed:
            return
        step = int(step)
        now = time.monotonic()
        self._step = step
        self._postfix = postfix
        self._pending = True
        final = step >= self.total
        if self._first is None:
            self._first = (step, now)
        if self._bar is not None:
            if final or now - self._last_print[1] >= self.min_interval_s:
                self._bar.set_postfix(self._postfix_items(), refresh=False)
                self._last_print = (step, now)
            self._bar.update(step - self._bar.n)
            return
        if not self._shown_any or final or now - self._last_print[1] >= self.min_interval_s:
            self._print_line(now)

    def write(self, text: str) -> None:
        """Prints a message (e.g. eval results) without garbling the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Shows the last update if it has not been shown yet, and closes the bar."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            if self._pending:
                self._bar.set_postfix(self._postfix_items(), refresh=False)
            self._bar.close()
        elif self._pending:
            self._print_line(time.monotonic(), closing=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _postfix_items(self) -> dict[str, str]:
        items = {k: _fmt_value(v) for k, v in self._postfix.items()}
        rate = self._bar.format_dict.get("rate") if self._bar is not None else None
        if self.batch_size and rate:
            items["ex/s"] = _fmt_rate(rate * self.batch_size)
        return items

    def _print_line(self, now: float, closing: bool = False) -> None:
        step = self._step
        parts = []
        if self.desc:
            parts.append(f"[{self.desc}]")
        # Rounded down, so that 100% means done.
        percent = math.floor(100 * step / self.total) if self.total > 0 else 100
        parts.append(f"{self.unit} {step}/{self.total} ({percent}%)")

        assert self._first is not None
        final = step >= self.total
        is_first = not self._shown_any
        if final or closing:  # Mean rate after the first update (which includes compilation).
            since_step, since_time = self._first
        else:  # Rate since the previous line.
            since_step, since_time = self._last_print
        rate = None
        if not is_first and step > since_step and now > since_time:
            rate = (step - since_step) / (now - since_time)
            parts.append(f"{_fmt_rate(rate)} {self.unit}/s")
            if self.batch_size:
                parts.append(f"{_fmt_rate(rate * self.batch_size)} ex/s")

        parts.extend(f"{k}={_fmt_value(v)}" for k, v in self._postfix.items())

        if is_first and not final:
            parts.append(f"(first update after {_fmt_duration(now - self._start)})")
        elif final:
            parts.append(f"done in {_fmt_duration(now - self._start)}")
        elif closing:
            parts.append(f"stopped after {_fmt_duration(now - self._start)}")
        elif rate:
            parts.append(f"eta {_fmt_duration((self.total - step) / rate)}")
        self._stream.write(" ".join(parts) + "\n")
        self._stream.flush()
        self._last_print = (step, now)
        self._pending = False
        self._shown_any = True


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # No isatty, or a closed stream.
        return False


def _fmt_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _fmt_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.1f}" if rate < 1000 else f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.2f}"
    return f"{rate:.3g}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
