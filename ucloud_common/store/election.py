"""Leader election: one leader among N processes, through one key attached to the leader's lease.

The leader is whoever created `/v1/leader/<name>`; the key dies with the leader's lease, so a dead
leader is replaced within the lease's TTL. The leader's writes carry `guard`: they are applied only
while the key still has the create-revision it had when this process won. A deposed leader (stopped
past its TTL, partitioned) therefore cannot write, even before it notices it was deposed.
"""

from __future__ import annotations

import logging
import threading
import time

from ucloud_common.failures import Failures
from ucloud_common.record import check_name
from ucloud_common.store.errors import (
    Compacted,
    GuardFailed,
    LeaseExpired,
    StoreUnavailable,
)
from ucloud_common.store.contract import AbstractStore, Guard
from ucloud_common.store.lease import KeptLease

log = logging.getLogger(__name__)

LEADER_PREFIX = "/v1/leader/"


def leader_key(name: str) -> str:
    return LEADER_PREFIX + check_name(name)


class Election:
    def __init__(self, store: AbstractStore, name: str, candidate: str, ttl: int) -> None:
        self._store = store
        self.key = leader_key(name)
        self.candidate = candidate
        self.ttl = ttl
        self._lease: KeptLease | None = None
        self._guard: Guard | None = None
        self.deposed = threading.Event()
        self._failures = Failures(f"election {self.key}", (StoreUnavailable,))

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
        """Block until this candidate leads (True) or `stop` is set (False). Never raises: etcd
        being unreachable, or anything unexpected, is logged and the campaign goes on after a pause."""
        while not stop.is_set():
            with self._failures.caught():
                try:
                    if self._try_to_lead():
                        return True
                    self._wait_for_vacancy(stop)
                    continue
                except LeaseExpired as exc:
                    log.warning("election %s: %s; campaigning again on a new lease", self.key, exc)
                    self._drop_lease()
                    continue
            # etcd away, or anything unexpected: a campaign that ends leaves a standby that never
            # takes over, so it goes on after a pause.
            stop.wait(1.0)
        return False

    def _try_to_lead(self) -> bool:
        if self._lease is None or self._lease.lost.is_set():
            self._lease = KeptLease(self._store, self.ttl, self.ttl / 4, on_lost=self._on_lease_lost)
        won, revision, holder = self._store.create_key(self.key, self.candidate, self._lease.id)
        if not won:
            log.debug("election %s: %s leads", self.key, holder or "?")
            return False
        self.deposed.clear()
        self._guard = Guard(self.key, revision)
        log.info("election %s: %s is the leader (revision %d)", self.key, self.candidate, revision)
        return True

    def _wait_for_vacancy(self, stop: threading.Event) -> None:
        """Return when the leader key is deleted, or after one TTL (a missed event costs one wait).
        The watch starts right after the revision the key was read at, so a deletion between the
        read and the watch is seen too."""
        holder, revision = self._store.read_key(self.key)
        if holder is None:
            return
        try:
            watch = self._store.watch(self.key.encode(), None, revision + 1)
        except Compacted:  # history since the read is gone: whatever happened, campaign again
            return
        try:
            deadline = time.monotonic() + self.ttl
            while not stop.is_set() and time.monotonic() < deadline:
                events = watch.next(timeout=0.2)
                if events and any(event.value is None for event in events):
                    return
        except Compacted:
            return
        finally:
            watch.cancel()

    def _on_lease_lost(self) -> None:
        if self._guard is not None:
            log.error("election %s: %s lost its lease and is no longer the leader", self.key, self.candidate)
        self.deposed.set()
        self._guard = None

    def _drop_lease(self) -> None:
        if self._lease is not None:
            self._lease.close(revoke=False)
            self._lease = None

    def resign(self) -> None:
        """Give up leadership (if held) at once, so a standby need not wait for the TTL. Call it
        once no campaign runs any more (a campaign running meanwhile could win again)."""
        leading = self.is_leader
        self._guard = None
        self.deposed.set()
        if self._lease is not None:
            self._lease.close(revoke=True)
            self._lease = None
        if leading:
            log.info("election %s: %s resigned", self.key, self.candidate)
