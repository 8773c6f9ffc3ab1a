"""One lock per key (a user, an image) within a process, made when first asked for and dropped when
nobody holds it or waits for it: keys come and go (users), and a lock per key ever seen would stay."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.RLock, int]] = {}  # key → (its lock, holders and waiters)

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        """Hold `key`'s lock (re-entrant: a thread holding it may take it again)."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.RLock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
