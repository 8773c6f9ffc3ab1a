"""What time it is, asked in one place: the real clock in the daemons, a simulated one in the
scenario tests (which replay hours of crashes, backoffs and lease expiries in milliseconds).

Code that decides by time reads `now()` (seconds since the epoch, as in records' timestamps) or
`monotonic()` (for intervals); it never calls `time` itself, so one `simulated(clock)` moves
everything at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes back."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class SimClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._start = start

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._now += seconds


_clock: Clock = SystemClock()


def current() -> Clock:
    return _clock


def now() -> float:
    return _clock.time()


def monotonic() -> float:
    return _clock.monotonic()


@contextmanager
def simulated(clock: Clock) -> Iterator[Clock]:
    """Let `clock` tell the time until the block ends (tests only: the clock is process-wide)."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous
