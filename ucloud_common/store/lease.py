"""An etcd lease kept alive by a background thread: an agent's heartbeat, a leader's tenure.

The lease is the only notion of liveness in ucloud: keys attached to it vanish when its holder stops
renewing it, as judged by etcd's clock, not by comparing timestamps written by different machines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ucloud_common.failures import Failures
from ucloud_common.store.errors import StoreError, StoreUnavailable
from ucloud_common.store.contract import AbstractStore

log = logging.getLogger(__name__)


class KeptLease:
    """Grant a lease of `ttl` seconds and renew it every `interval` seconds until `close()`.

    `lost` is set (and `on_lost` called once, from the keep-alive thread) when etcd reports the
    lease expired, or when no renewal has succeeded for a whole TTL, in which case etcd has expired
    it or will at any moment. A lost lease is never renewed again: its keys are gone, and the holder
    must start over with a new one.
    """

    def __init__(self, store: AbstractStore, ttl: int, interval: float,
                 on_lost: Callable[[], None] | None = None) -> None:
        if interval * 2 > ttl:
            raise ValueError(f"a lease of {ttl} s renewed every {interval} s would expire on one late renewal")
        self._store = store
        self.ttl = ttl
        self._interval = interval
        self._on_lost = on_lost
        self.lost = threading.Event()
        self._closed = threading.Event()
        self.id = store.grant_lease(ttl)
        self._renewed_at = time.monotonic()
        self._failures = Failures(f"lease {self.id:x}: renewal", (StoreUnavailable,))
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease-{self.id:x}", daemon=True)
        self._thread.start()

    def _keep_alive(self) -> None:
        """Renew until closed or lost. Never dies of an exception: a keep-alive thread that ended
        silently would let the lease expire while its holder believes it still has it. A failed
        renewal (etcd away, a refusal, a bug) is told once and tried again; once none succeeded
        for a whole TTL, the lease is lost."""
        while not self._closed.wait(self._interval):
            remaining: int | None = None
            with self._failures.caught():
                remaining = self._store.refresh_lease(self.id)
            if remaining is not None and remaining > 0:
                self._renewed_at = time.monotonic()
                continue
            silent = time.monotonic() - self._renewed_at
            if remaining is None and silent < self.ttl:
                continue
            self._lose("etcd says it expired" if remaining is not None
                       else f"no renewal succeeded for {silent:.1f} s (TTL {self.ttl} s)")
            return

    def _lose(self, why: str) -> None:
        log.error("lease %x lost: %s", self.id, why)
        self.lost.set()
        if self._on_lost is not None:
            with self._failures.caught("telling its holder"):
                self._on_lost()

    def close(self, revoke: bool = True) -> None:
        """Stop renewing; with `revoke`, also delete every key attached (a clean shutdown)."""
        self._closed.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        if revoke and not self.lost.is_set():
            try:
                self._store.revoke_lease(self.id)
            except StoreError as exc:
                log.warning("lease %x: could not revoke (%s); it expires in %d s", self.id, exc, self.ttl)
