"""Progress for long loops: a tqdm bar on a terminal, periodic plain lines everywhere else.

A tqdm bar redraws itself with carriage returns; in a CI log, a ``nohup`` file or a batch job's
output every redraw becomes text, thousands of lines of it. :func:`progress` therefore draws the
bar only when its stream is a terminal (or inside a notebook) and otherwise prints one plain
line each time the loop passes another ``fraction`` of its total or ``interval_s`` seconds have
gone by, whichever comes first, and one at the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from typing import IO, Protocol

from tqdm.auto import tqdm


class Progress(Protocol):
    """What the loops call: the subset of tqdm's interface they use."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values) -> None: ...

    def close(self) -> None: ...


def is_interactive(stream: IO) -> bool:
    """Whether ``stream`` is shown live to a person: a terminal, or a Jupyter kernel's output."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class PlainProgress:
    """Plain progress lines (no carriage returns) for logs.

    Args:
      total: the amount of work (steps, images) when complete.
      initial: work already done (a resumed run).
      desc: what is progressing, printed first on each line.
      unit: the unit of ``total`` (``"step"``, ``"img"``).
      stream: where lines go.
      fraction: print when another ``fraction`` of ``total`` is done (0.1: at 10%, 20%, ...).
      interval_s: also print when this many seconds passed since the last line.
      clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        stream: IO,
        fraction: float = 0.1,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0 or initial < 0:
            raise ValueError(f"progress: total and initial must be >= 0, got {total}, {initial}")
        if not 0 < fraction <= 1:
            raise ValueError(f"progress: fraction must be in (0, 1], got {fraction}")
        if interval_s <= 0:
            raise ValueError(f"progress: interval_s must be positive, got {interval_s}")
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self._stream, self._fraction = stream, fraction
        self._interval, self._clock = interval_s, clock
        self._start_n, self._start_t = initial, clock()
        self._last_t, self._printed_n = self._start_t, initial
        self._next_mark = self._mark_after(initial)
        self._postfix = ""
        self._closed = False

    def _mark_after(self, n: int) -> int:
        """The first count above ``n`` that reaches the next multiple of ``fraction * total``
        (exact rational arithmetic: float multiples like ``0.1 * 11`` would drift)."""
        size = Fraction(self._fraction).limit_denominator(10**6) * self.total
        if size == 0:
            return n + 1
        return math.ceil((math.floor(n / size) + 1) * size)

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units of work; print a line if a mark or the interval is passed."""
        self.n += n
        now = self._clock()
        if self.n >= self._next_mark or now - self._last_t >= self._interval:
            self._print(now)

    def set_postfix(self, **values) -> None:
        """Values appended to the next lines (e.g. ``loss="0.123"``)."""
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Print the final line (unless the last line already showed this count)."""
        if not self._closed and self.n != self._printed_n:
            self._print(self._clock())
        self._closed = True

    def _print(self, now: float) -> None:
        done = f"{self.n}/{self.total} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = now - self._start_t
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {done}" if self.desc else done, f"{elapsed:.0f} s"]
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if self._postfix:
            parts.append(self._postfix)
        print(", ".join(parts), file=self._stream, flush=True)
        self._last_t, self._printed_n = now, self.n
        self._next_mark = self._mark_after(self.n)


class _Disabled:
    """No output at all (``enabled=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress(
    total: int,
    *,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    stream: IO | None = None,
    fraction: float = 0.1,
    interval_s: float = 60.0,
) -> Progress:
    """A progress display for a loop over ``total`` units of work, ``initial`` already done.

    A tqdm bar when ``stream`` (default: ``sys.stderr``, where tqdm draws) is interactive;
    otherwise :class:`PlainProgress` lines every ``fraction`` of the work or ``interval_s``
    seconds; nothing when ``enabled`` is false.
    """
    if not enabled:
        return _Disabled()
    stream = sys.stderr if stream is None else stream
    if is_interactive(stream):
        return tqdm(
            total=total,
            initial=initial,
            desc=desc or None,
            unit=unit,
            file=stream,
            dynamic_ncols=True,
            smoothing=0.1,
        )
    return PlainProgress(
        total,
        initial=initial,
        desc=desc,
        unit=unit,
        stream=stream,
        fraction=fraction,
        interval_s=interval_s,
    )
