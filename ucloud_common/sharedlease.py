"""Leases shared by every key written within one time bucket: etcd holds one lease per bucket, not
one per key (500 idempotent replies or 5,000 events made within an hour ride on one lease).

A key written in bucket b lives until b's end plus `keep` seconds: between `keep` and `keep + bucket`.
The first process that needs a bucket's lease grants it and publishes it under the family given
(on that lease itself, so it goes with it, named by the bucket and the lease's TTL); the others
that keep for as long use the published one.
"""

from __future__ import annotations

import threading
import weakref

from ucloud_common import clock
from ucloud_common.record import Family, Record
from ucloud_common.store.contract import AbstractStore
from ucloud_common.store.errors import AlreadyExists, Conflict


class SharedLease(Record):
    """The lease every key of one time bucket is kept on (the key itself lives on it)."""

    lease: int


class SharedLeases:
    def __init__(self, family: Family[SharedLease], bucket: float, keep: float) -> None:
        self.family = family
        self.bucket = bucket
        self.keep = keep
        # Whole seconds (etcd's unit), rounded up: a key never goes before `keep` has passed.
        self.ttl = int(bucket + keep) + 1
        # Per store (tests run several etcds in one process): (bucket number, lease), the current one only.
        self._cache: weakref.WeakKeyDictionary[AbstractStore, tuple[int, int]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def current(self, store: AbstractStore) -> int:
        """The lease of the current bucket. `Conflict` (retry) in the rare case that a published
        lease vanished three times in a row between being found and being read."""
        bucket = int(clock.now() // self.bucket)
        with self._lock:
            cached = self._cache.get(store)
        if cached is not None and cached[0] == bucket:
            return cached[1]
        # Named by its TTL too: processes configured to keep for different times (the API's settings
        # and an agent's) must not ride on whichever lease was published first.
        name = f"{bucket}-{self.ttl}"
        for _ in range(3):
            published = store.get(self.family, name)
            if published is not None:
                lease = published.value.lease
                break
            lease = store.grant_lease(self.ttl)
            try:
                store.create(self.family, name, SharedLease(lease=lease), lease=lease)
                break
            except AlreadyExists:  # another process published one first: use it, give ours up
                store.revoke_lease(lease)
        else:
            raise Conflict(f"the shared lease of {self.family.prefix}{name} kept vanishing; retry")
        with self._lock:
            self._cache[store] = (bucket, lease)
        return lease

    def forget(self, store: AbstractStore) -> None:
        """Drop the cached lease after a write named it and got `LeaseExpired` (revoked, or etcd
        restored from a backup): the next `current` finds or grants the bucket's new one."""
        with self._lock:
            self._cache.pop(store, None)
