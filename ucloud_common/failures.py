"""How a loop that must go on tells its failures: each distinct failure once, not once per turn.

Every background loop of every daemon catches what one turn raises and goes on (a thread that
dies of one exception silently stops a duty: the agent's monitor once died of one garbage host
record, and a crash was then noticed only by the next resync). Catching is half of it; the other
half is telling it without flooding the journal: a loop that turns every second would repeat the
same traceback 3,600 times an hour, and the one line that says something new drowns in it.

So, per subject (a VM's uuid for a loop over VMs, "" for a loop with one duty):
- the first failure is logged with its traceback (without it for `expected` kinds, such as etcd
  being unreachable, whose message says everything);
- the same failure again is counted, and reminded every `remind` seconds while it lasts;
- a different failure is logged as new;
- the first success after failures says that the loop works again, and after how many.
Two failures are "the same" when their type and message agree up to numbers (a message saying
"for 3.2 s" and then "for 4.1 s" is one failure going on).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How long a failure that goes on stays quiet: long enough not to flood, short enough that someone
# reading the last quarter of an hour of the log sees that it still fails.
REMIND_S = 600.0

_NUMBERS = re.compile(r"\d+(\.\d+)?")


@dataclass
class _Failing:
    same_as: str  # the failure, with its numbers left out
    times: int
    since: float
    told_at: float


class Failures:
    """The failures of one loop, named `what` in the log ("monitor", "follow-vm", …).

    Use `with failures.caught(subject): <one turn>`: an `Exception` raised by the turn is told and
    swallowed (never a `BaseException`: an interrupt or a generator's close goes through), and
    `failing(subject)` then says whether the last turn for `subject` failed. Thread-safe.
    """

    def __init__(self, what: str, expected: tuple[type[Exception], ...] = (), *, remind: float = REMIND_S,
                 logger: logging.Logger | None = None) -> None:
        self._what = what
        self._expected = expected
        self._remind = remind
        self._log = logger or log
        self._lock = threading.Lock()
        self._failing: dict[str, _Failing] = {}

    @contextmanager
    def caught(self, subject: str = "") -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the point: told here, and the loop goes on
            self.failed(exc, subject)
        else:
            self.succeeded(subject)

    def failing(self, subject: str = "") -> bool:
        with self._lock:
            return subject in self._failing

    def failed(self, exc: Exception, subject: str = "") -> None:
        same_as = f"{type(exc).__qualname__}: {_NUMBERS.sub('#', str(exc))}"
        now = time.monotonic()
        about = f"{self._what}{f' ({subject})' if subject else ''}"
        with self._lock:
            known = self._failing.get(subject)
            if known is not None and known.same_as == same_as:
                known.times += 1
                if now - known.told_at < self._remind:
                    return
                known.told_at = now
                times, since = known.times, now - known.since
                remind = True
            else:
                self._failing[subject] = _Failing(same_as, 1, now, now)
                remind = False
        if remind:
            self._log.warning("%s still fails, %d times in %.0f s: %s: %s", about, times, since,
                              type(exc).__name__, exc)
        elif isinstance(exc, self._expected):
            self._log.warning("%s failed: %s; going on (told again only if it still fails in %.0f s)",
                              about, exc, self._remind)
        else:
            self._log.error("%s failed: %s: %s; going on (told again only if it still fails in %.0f s)",
                            about, type(exc).__name__, exc, self._remind, exc_info=exc)

    def succeeded(self, subject: str = "") -> None:
        with self._lock:
            known = self._failing.pop(subject, None)
        if known is not None:
            self._log.info("%s%s works again after failing %d times in a row",
                           self._what, f' ({subject})' if subject else '', known.times)
