"""The one retry helper: exponential backoff with full jitter, bounded by attempts and a deadline.

Jitter matters because ucloud's writers race on the same keys (API workers, the scheduler, agents):
without it, writers that lost a compare-and-swap together retry together and lose again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays of `initial * multiplier**n`, capped at `maximum`, each drawn uniformly from
    [0, delay] ("full jitter"), so that colliding writers spread out instead of colliding again."""

    initial: float = 0.005
    maximum: float = 1.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield random.uniform(0, delay)
            delay = min(self.maximum, delay * self.multiplier)


def sleeps(backoff: Backoff, attempts: int | None = None, deadline: float | None = None) -> Iterator[int]:
    """Yield attempt numbers 1, 2, …, sleeping the backoff delay between them.

    Stops after `attempts` attempts or once `deadline` (a `time.monotonic()` value) would be passed by
    the next sleep; the caller raises its own clear error when the iteration ends.
    """
    delays = backoff.delays()
    attempt = 1
    while True:
        yield attempt
        if attempts is not None and attempt >= attempts:
            return
        delay = next(delays)
        if deadline is not None and time.monotonic() + delay > deadline:
            return
        time.sleep(delay)
        attempt += 1
