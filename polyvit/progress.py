"""A small progress bar on stderr: count/total, rate, elapsed and ETA. No dependencies.

On a terminal it redraws one line (at most ~10 times a second); when stderr is not a terminal
(a log file, CI, pytest's capture) it prints only the final line, so logs stay short. With
``enabled=False`` it prints nothing at all.

    with Progress(50000, desc="decoding") as bar:
        for item in items:
            ...
            bar.update()
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


def _fmt_time(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _fmt_rate(r: float, unit: str) -> str:
    if r >= 100:
        return f"{r:,.0f} {unit}/s"
    if r >= 1:
        return f"{r:.1f} {unit}/s"
    if r > 0:
        return f"{1 / r:.2f} s/{unit}"
    return f"? {unit}/s"


class Progress:
    """Progress over ``total`` items (``None``: unknown total, no bar or ETA).

    ``update(n=1)`` advances; ``close()`` (or leaving the ``with`` block) writes the final line.
    ``file`` defaults to ``sys.stderr`` (looked up when the bar is made, so pytest's capture
    and redirections are honoured)."""

    def __init__(self, total: Optional[int], desc: str = "", unit: str = "it", enabled: bool = True,
                 file: Optional[TextIO] = None, width: int = 24, min_interval: float = 0.1):
        self.total = None if total is None else max(0, int(total))
        self.desc = desc or ""
        self.unit = unit
        self.enabled = bool(enabled)
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.n = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._closed = False
        try:
            self.tty = bool(self.file.isatty())
        except Exception:
            self.tty = False
        if self.enabled and self.tty:
            self._draw()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        """The current status line (without a line ending)."""
        el = time.perf_counter() - self.start
        rate = self.n / el if el > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(1.0, self.n / self.total)
            fill = int(round(frac * self.width))
            bar = "#" * fill + "-" * (self.width - fill)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            return (f"{head}{frac * 100:3.0f}% [{bar}] {self.n}/{self.total} "
                    f"[{_fmt_time(el)}<{_fmt_time(eta)}, {_fmt_rate(rate, self.unit)}]")
        return f"{head}{self.n} {self.unit} [{_fmt_time(el)}, {_fmt_rate(rate, self.unit)}]"

    def _draw(self) -> None:
        try:
            self.file.write("\r" + self.line() + "\x1b[K")
            self.file.flush()
        except Exception:  # a closed stream must never break the work being measured
            self.enabled = False
        self._last_draw = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and self.tty and not self._closed:
            if time.perf_counter() - self._last_draw >= self.min_interval:
                self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        try:
            if self.tty:
                self.file.write("\r" + self.line() + "\x1b[K\n")
            else:
                self.file.write(self.line() + "\n")
            self.file.flush()
        except Exception:
            pass
