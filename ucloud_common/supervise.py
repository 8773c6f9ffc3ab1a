"""A daemon's essential threads, watched: the first that ends while the daemon should run ends the
daemon, which then exits non-zero so that its supervisor (systemd) restarts it.

Why: a daemon missing one of its threads lives on half-blind. Measured by fault injection: a
scheduler whose VM follower died of one unexpected exception kept its leadership (its lease thread
still ran) while its view froze, so the standby never took over and no VM was placed again. A
fresh process relists everything, so dying loudly and being restarted is the safe action; every
loop still catches its own per-item errors and only a real bug or an impossible state gets here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Supervisor:
    """Starts a daemon's essential threads and ends the daemon when one of them ends early.

    Contract:
    - `start(name, target)` runs `target()` in a daemon thread named `name`.
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
