"""Leader election: one leader among N processes, through one key attached to the leader's lease.

The leader is whoever created `/v1/leader/<name>`; the key dies with the leader's lease, so a dead
leader is replaced within the lease's TTL. The leader's writes carry `guard`: they are applied only
while the key still has the create-revision it had when this process won. A deposed leader (stopped
past its TTL, partitioned) therefore cannot write, even before it notices it was deposed.
"""

from __future__ import annotations

import logging
import threading

from ucloud_common.record import check_name
from ucloud_common.store.errors import GuardFailed, StoreUnavailable
from ucloud_common.store.etcd import Guard, Store
from ucloud_common.store.lease import KeptLease

log = logging.getLogger(__name__)

LEADER_PREFIX = "/v1/leader/"


def leader_key(name: str) -> str:
    return LEADER_PREFIX + check_name(name)


class Election:
    def __init__(self, store: Store, name: str, candidate: str, ttl: int) -> None:
        self._store = store
        self.key = leader_key(name)
        self.candidate = candidate
        self.ttl = ttl
        self._lease: KeptLease | None = None
        self._guard: Guard | None = None
        self.deposed = threading.Event()

    @property
    def guard(self) -> Guard:
        """The guard for this leader's writes; `GuardFailed` if not (or no longer) the leader."""
        if self._guard is None or self.deposed.is_set():
            raise GuardFailed(f"{self.candidate} is not the leader of {self.key}")
        return self._guard

    @property
    def is_leader(self) -> bool:
        return self._guard is not None and not self.deposed.is_set()

    def campaign(self, stop: threading.Event) -> bool:
        """Block until this candidate leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if self._try_to_lead():
                    return True
                self._wait_for_vacancy(stop)
            except StoreUnavailable as exc:
                log.warning("election %s: %s; trying again", self.key, exc)
                stop.wait(1.0)
        return False

    def _try_to_lead(self) -> bool:
        if self._lease is None or self._lease.lost.is_set():
            self._lease = KeptLease(self._store, self.ttl, self.ttl / 4, on_lost=self._on_lease_lost)
        client = self._store.client
        tx = client.transactions
        with self._store.unavailable_as_error("campaign"):
            won, responses = client.transaction(
                compare=[tx.create(self.key) == 0],
                success=[tx.put(self.key, self.candidate, lease=self._lease.id)],
                failure=[tx.get(self.key)],
            )
        if not won:
            holder = responses[0][0][0].decode() if responses[0] else "?"
            log.debug("election %s: %s leads", self.key, holder)
            return False
        revision = responses[0].response_put.header.revision
        self.deposed.clear()
        self._guard = Guard(self.key, revision)
        log.info("election %s: %s is the leader (revision %d)", self.key, self.candidate, revision)
        return True

    def _wait_for_vacancy(self, stop: threading.Event) -> None:
        """Return when the leader key is deleted, or after a while (a missed event costs one wait)."""
        vacant = threading.Event()
        client = self._store.client

        def on_event(response: object) -> None:
            vacant.set()

        with self._store.unavailable_as_error("watch leader"):
            watch_id = client.add_watch_callback(self.key, on_event)
        try:
            # The key may have vanished between the failed campaign and the watch's start.
            with self._store.unavailable_as_error("read leader"):
                value, _ = client.get(self.key)
            while value is not None and not vacant.wait(0.2) and not stop.is_set():
                pass
        finally:
            try:
                client.cancel_watch(watch_id)
            except Exception:  # the stream may be gone already
                pass

    def _on_lease_lost(self) -> None:
        if self._guard is not None:
            log.error("election %s: %s lost its lease and is no longer the leader", self.key, self.candidate)
        self.deposed.set()
        self._guard = None

    def resign(self) -> None:
        """Give up leadership (if held) at once, so a standby need not wait for the TTL."""
        self._guard = None
        self.deposed.set()
        if self._lease is not None:
            self._lease.close(revoke=True)
            self._lease = None
