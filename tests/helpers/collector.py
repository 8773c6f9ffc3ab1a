"""A Follower run in a thread, recording everything it yields (for tests of following)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ucloud_common.store import Change, Follower, Snapshot, Versioned, apply
from ucloud_common.vm import VM


class Collector:
    """Runs a Follower in a thread and records everything it yields."""

    def __init__(self, follower: Follower[VM]) -> None:
        self.follower = follower
        self.items: list[Snapshot[VM] | Change[VM]] = []
        self.state: dict[str, Versioned[VM]] = {}
        self.ended: str | None = None  # why iterating ended, if it did (it must not before stop())
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.follower:
                with self._lock:
                    self.items.append(item)
                    apply(self.state, item)
            self.ended = "returned"
        except BaseException as exc:
            self.ended = f"raised {type(exc).__name__}: {exc}"
            raise

    def alive(self) -> bool:
        return self._thread.is_alive()

    def changes(self) -> list[Change[VM]]:
        with self._lock:
            return [item for item in self.items if isinstance(item, Change)]

    def snapshots(self) -> list[Snapshot[VM]]:
        with self._lock:
            return [item for item in self.items if isinstance(item, Snapshot)]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if condition():
                    return
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout} s; saw {len(self.items)} items"
                             + (f"; the follower {self.ended}" if self.ended else ""))

    def stop(self) -> None:
        self.follower.stop()
        self._thread.join(timeout=5)
