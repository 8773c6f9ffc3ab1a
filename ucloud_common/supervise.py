"""A daemon's threads, each a loop that goes on whatever one turn raises, and watched: the first
that ends while the daemon should run ends the daemon, which then exits non-zero so that its
supervisor (systemd) restarts it.

Why both: a thread that dies of one exception silently stops a duty (the agent's monitor died of one
garbage host record, and a QEMU crash was then noticed only by the next resync), so every loop of
every daemon goes through `loop`, `keep_going` or `follow` here, which tell a failed turn
(`ucloud_common.failures`: once per distinct failure) and go on. And a daemon missing one of its
threads lives on half-blind (measured by fault injection: a scheduler whose VM follower had died
kept its leadership while its view froze, so the standby never took over and no VM was placed
again), so a thread that ends anyway, which only a real bug or an interrupt can do now, ends the
daemon: a fresh process relists everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ucloud_common.failures import Failures

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed turn a loop waits at least this long: a turn that fails at once must not turn hot.
PAUSE_AFTER_FAILURE_S = 1.0


class Supervisor:
    """Starts a daemon's essential threads and ends the daemon when one of them ends early.

    Contract:
    - `start(name, target)` runs `target()` in a daemon thread named `name`; `loop` and `follow`
      start a thread whose target goes on whatever one turn or item raises (`keep_going` does the
      same in the calling thread). Every background loop of a daemon is started through these.
    - If a target returns or raises before `stop` is set, `failure` is set to a sentence naming the
      thread and why it ended, and `stop` is set: the daemon shuts down through its ordinary path
      (stopping its other threads, resigning its leadership, revoking its lease). Only the first
      failure is kept.
    - A target that ends after `stop` was set is an ordinary shutdown, not a failure.
    - The daemon's entry point exits non-zero when `failure` is set (`ucloud_common.cli.exit_if_failed`).
    """

    def __init__(self, stop: threading.Event, wake: Callable[[], None] | None = None) -> None:
        """`wake`, if given, is called once `stop` was set because of a failure: for a main loop
        that blocks on something other than `stop` (the scheduler's inbox)."""
        self._stop = stop
        self._wake = wake
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.failure: str | None = None

    def start(self, name: str, target: Callable[[], object]) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(name, target), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def loop(self, name: str, turn: Callable[[], object], *, every: float = 0.0,
             expected: tuple[type[Exception], ...] = ()) -> threading.Thread:
        """Start thread `name` running `keep_going(name, turn, …)`."""
        return self.start(name, lambda: self.keep_going(name, turn, every=every, expected=expected))

    def keep_going(self, name: str, turn: Callable[[], object], *, every: float = 0.0,
                   expected: tuple[type[Exception], ...] = ()) -> None:
        """In this thread, until `stop`: wait `every` seconds (0: a turn that blocks by itself), run
        `turn()`. A turn that raises is told (once per distinct failure; `expected` kinds without
        a traceback) and the next one goes on, after `PAUSE_AFTER_FAILURE_S` at least."""
        failures = Failures(name, expected)
        while not self._stop.wait(every):
            with failures.caught():
                turn()
            if failures.failing():
                self._stop.wait(max(0.0, PAUSE_AFTER_FAILURE_S - every))

    def follow(self, name: str, items: Iterable[T], fold: Callable[[T], object],
               subject: Callable[[T], str] = lambda item: str(getattr(item, "name", type(item).__name__)),
               ) -> threading.Thread:
        """Start thread `name` folding each of `items` (a store `Follower`) until `stop`.

        An item whose fold raises is told (once per distinct failure of the item named by
        `subject(item)`, by default its `name`: a `Change`'s key name, or "Snapshot") and skipped: the others still come, and the follower's periodic resync
        brings the skipped one again. An iteration that raises (a bug: a `Follower` never does) is
        told and iterated again after a pause; a `Follower` then resumes after the last item it
        gave. An iteration that ends is the thread's end (a `Follower` ends only when stopped)."""
        failures = Failures(name)

        def fold_all() -> None:
            while not self._stop.is_set():
                with failures.caught():
                    for item in items:
                        with failures.caught(subject(item)):
                            fold(item)
                    return
                self._stop.wait(PAUSE_AFTER_FAILURE_S)

        return self.start(name, fold_all)

    def _run(self, name: str, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by fail(): it ends the daemon
            self.fail(name, f"raised {type(exc).__name__}: {exc}", exc)
            return
        self.fail(name, "returned although the daemon was not stopping")

    def fail(self, name: str, why: str, exc: BaseException | None = None) -> None:
        """Record that the essential part `name` ended (`why`) and stop the daemon, unless the daemon
        is stopping anyway. Also for the daemon's own main loop, which is essential too."""
        with self._lock:
            if self._stop.is_set():
                if exc is not None:
                    log.warning("%s %s while the daemon was stopping", name, why, exc_info=exc)
                return
            if self.failure is None:
                self.failure = f"essential thread {name} {why}"
                log.critical("%s; stopping the daemon, to be restarted", self.failure, exc_info=exc)
            self._stop.set()
        if self._wake is not None:
            self._wake()

    def join(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds in all for the threads to end; the names of those still running."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]
