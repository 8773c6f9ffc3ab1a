"""Work on one VM at a time, different VMs in parallel (kopf's per-object queueing).

`submit(key)` asks for the handler to run for `key`; asks that arrive while it runs fold into one
more run afterwards, so the handler always ends up seeing the latest state, and never runs twice
at once for the same key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ucloud_common.failures import Failures

FAILED_RETRY_S = 5.0  # a handler that raised (a bug: the agent's reconcile catches) runs again after this


class KeyedWorkers:
    def __init__(self, handler: Callable[[str], float | None], threads: int = 8) -> None:
        """`handler(key)` may return a delay in seconds (0: at once) after which it wants to run again."""
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vm")
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._timers: dict[str, tuple[threading.Timer, float]] = {}  # the pending look, and when it is due
        self._closed = False
        self._failures = Failures("reconcile")

    def submit(self, key: str, delay: float = 0.0) -> None:
        if delay > 0:
            due = time.monotonic() + delay
            with self._lock:
                pending = self._timers.get(key)
                if self._closed or (pending is not None and pending[0].is_alive() and pending[1] <= due):
                    return  # an earlier look is due anyway: it decides afresh
                if pending is not None:
                    pending[0].cancel()  # the earlier of two looks wins (a backoff of 1 s after a 60 s wait)
                timer = threading.Timer(delay, self.submit, args=(key,))
                timer.daemon = True
                self._timers[key] = (timer, due)
            timer.start()
            return
        with self._lock:
            if self._closed:
                return
            if key in self._running:
                self._again.add(key)
                return
            self._running.add(key)
        self._pool.submit(self._run, key)

    def _run(self, key: str) -> None:
        while True:
            delay: float | None = FAILED_RETRY_S
            with self._failures.caught(f"vm={key}"):  # one VM's failure never stops the others
                delay = self._handler(key)
            with self._lock:
                if key in self._again and not self._closed:
                    self._again.discard(key)
                    continue
                self._running.discard(key)
            if delay is not None:
                self.submit(key, delay)
            return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for timer, _ in self._timers.values():
                timer.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
