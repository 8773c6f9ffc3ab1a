"""`MemoryStore`: the store's contract (`contract.py`) kept in memory, so that scenario tests can
replay hours of a cluster (scheduler, agents) in simulated time without drifting from etcd.

What it emulates of etcd, because a scenario's outcome depends on it:
- MVCC: one global revision, advanced by exactly one per transaction that changes anything; each
  key's create_revision, mod_revision and version; a deletion is an event at its own revision.
- Transactions: compares, the guard and the writes all or nothing, and etcd's refusals of the
  request itself (a key written twice, more than 128 operations, more than 1.5 MiB): a transaction
  that etcd would refuse fails here too. The guard is checked before a lost compare is reported.
- Leases on `ucloud_common.clock`: a lease not refreshed within its TTL expires lazily, at the next
  call to any store or watch of the keyspace (no threads: deterministic under a `SimClock`); its keys
  are deleted in one revision per lease, in key order, as etcd's lessor does. A TTL below etcd's
  minimum is raised to it. Grant leases under the clock that will run them (`clock.simulated`).
- Watches (`MemoryWatch`) with etcd's history and compaction: `compact(revision)` forgets history,
  and watching from before it raises `Compacted` (Follower then lists again).
- Unreachability: `unavailable = True` makes every call of this connection raise
  `StoreUnavailable` (open watches too, at their next `next`), as a client cut off from etcd sees it;
  a write that raised it was never applied here. `connect()` gives another connection to the same
  keyspace (another process), with its own flag.

What it does not have: members and failover (`endpoint` is "memory"), paging, the raw client
(`Store.client`). Every call holds one lock, so threads (KeptLease's keep-alive, a Follower in a
thread) may share a store; only `MemoryWatch.next` waits, and only for another thread's write.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyetcd.utils

from ucloud_common import clock
from ucloud_common.config import Settings
from ucloud_common.record import Family, R
from ucloud_common.store.contract import (
    AbstractStore,
    Guard,
    Listing,
    Put,
    Remove,
    Versioned,
    Write,
    already_exists,
    changed_since,
    check_guard,
    first_conflict,
    listed,
)
from ucloud_common.store.errors import Compacted, LeaseExpired, StoreRefused, StoreUnavailable, TooLarge
from ucloud_common.store.watch import WATCH_IDLE_S, Event

ENDPOINT = "memory"
# etcd raises a shorter TTL to 1.5 election timeouts, rounded up to whole seconds: 2 s with the
# default --election-timeout of 1 s (etcdserver's minTTL), which is what our deployments run.
MIN_LEASE_TTL = 2
# etcd's defaults for --max-txn-ops and --max-request-bytes: a bigger transaction is refused.
MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = 1_572_864
# How often a waiting watch looks at the clock for leases that expired meanwhile (real seconds).
_EXPIRY_POLL_S = 0.1

# One write of a transaction: key, value (None: delete), lease (0: none).
_Write = tuple[bytes, bytes | None, int]


@dataclass
class _Entry:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass
class _Lease:
    ttl: int
    expires_at: float  # on clock.monotonic()
    keys: set[bytes] = field(default_factory=set)


class Keyspace:
    """The state of one emulated etcd cluster, shared by every `MemoryStore` connected to it.
    Every method is called with `lock` held."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.RLock())  # notified on every change
        self.entries: dict[bytes, _Entry] = {}
        self.keys: list[bytes] = []  # sorted, for range reads
        self.revision = 1  # an empty etcd is at revision 1
        self.compacted = 0
        self.history: list[Event] = []  # every event since `compacted`, in revision order
        self.leases: dict[int, _Lease] = {}
        self._expiries: list[tuple[float, int]] = []  # heap; stale entries are skipped when popped
        self._lease_ids = itertools.count(0x694D_2C0F_0000_0001)
        self.watches: list[MemoryWatch] = []

    def in_range(self, start: bytes, end: bytes) -> list[bytes]:
        return self.keys[bisect.bisect_left(self.keys, start):bisect.bisect_left(self.keys, end)]

    def apply(self, writes: list[_Write]) -> int:
        """Apply puts and deletes as one revision (none if nothing changes); the revision after."""
        revision = self.revision + 1
        events: list[Event] = []
        for key, value, lease in writes:
            old = self.entries.get(key)
            if old is not None and old.lease in self.leases:
                self.leases[old.lease].keys.discard(key)
            if value is None:
                if old is None:
                    continue  # deleting an absent key changes nothing, as in etcd
                del self.entries[key]
                del self.keys[bisect.bisect_left(self.keys, key)]
                events.append(Event(key, None, revision, 0))
                continue
            if old is None:
                bisect.insort(self.keys, key)
            entry = _Entry(value, old.create_revision if old else revision, revision,
                           old.version + 1 if old else 1, lease)
            self.entries[key] = entry
            if lease:
                self.leases[lease].keys.add(key)
            events.append(Event(key, value, revision, entry.create_revision))
        if not events:
            return self.revision
        self.revision = revision
        self.history.extend(events)
        for watch in self.watches:
            watch._deliver(events)
        self.lock.notify_all()
        return revision

    def grant(self, ttl: int) -> int:
        lease_id = next(self._lease_ids)
        self.leases[lease_id] = _Lease(ttl, 0.0)
        self.refresh(lease_id)
        return lease_id

    def refresh(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = clock.monotonic() + lease.ttl
        heapq.heappush(self._expiries, (lease.expires_at, lease_id))
        return lease.ttl

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            # One transaction per lease, its keys in sorted order (etcd's lessor sorts them so that
            # every member applies the same deletions in the same order).
            self.apply([(key, None, 0) for key in sorted(lease.keys)])

    def promote(self) -> None:
        """Give every lease a full TTL again, as a new etcd leader (or a restarted etcd) does: no
        lease expires for the time nobody could reach etcd to renew it (etcd's lessor Promote)."""
        for lease_id in list(self.leases):
            self.refresh(lease_id)

    def expire(self) -> None:
        """Revoke every lease whose TTL has run out, earliest first (etcd's lessor does this every
        500 ms; here it happens before whatever is asked next, which nothing can tell apart)."""
        now = clock.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, lease_id = heapq.heappop(self._expiries)
            lease = self.leases.get(lease_id)
            if lease is not None and lease.expires_at == expires_at:  # else refreshed since
                self.revoke(lease_id)


@dataclass(frozen=True)
class _Outcome:
    succeeded: bool
    revision: int
    actual: list[int]  # the mod_revision (0: absent) of each expected key, in order


class MemoryStore(AbstractStore):
    """`AbstractStore` in memory (the module's docstring says what of etcd it emulates).

    `MemoryStore()` is a new, empty keyspace; `connect()` another client of the same one.
    """

    def __init__(self, settings: Settings | None = None, keyspace: Keyspace | None = None) -> None:
        self.settings = settings or Settings()
        self.keyspace = keyspace or Keyspace()
        self._unavailable = False
        self._closed = False

    def connect(self) -> MemoryStore:
        """Another connection to the same keyspace, as another process would have: shared keys,
        revisions, leases and history, but its own `unavailable` flag."""
        return MemoryStore(self.settings, self.keyspace)

    @property
    def unavailable(self) -> bool:
        """While True, every call of this connection raises `StoreUnavailable` and applies nothing
        (etcd keeps running: the clock goes on, and leases this connection fails to refresh expire)."""
        return self._unavailable

    @unavailable.setter
    def unavailable(self, value: bool) -> None:
        with self.keyspace.lock:
            self._unavailable = value
            self.keyspace.lock.notify_all()  # a waiting watch fails at once, as a broken stream does

    @property
    def endpoint(self) -> str:
        return ENDPOINT

    def close(self) -> None:
        self._closed = True

    def compact(self, revision: int) -> None:
        """Forget the history before `revision` (what `Store.client.compact` does to etcd): a watch
        from an earlier revision raises `Compacted`. Open watches are not affected (etcd's are not
        either: it has sent them their events already). History grows until this is called."""
        ks = self.keyspace
        with ks.lock:
            if revision > ks.revision:
                raise ValueError(f"cannot compact to revision {revision}: the store is at {ks.revision} "
                                 "(etcd: required revision is a future revision)")
            if revision <= ks.compacted:
                raise Compacted(f"etcd at {ENDPOINT}: compact to {revision}: required revision has been "
                                f"compacted (compacted up to {ks.compacted})", ks.compacted)
            ks.compacted = revision
            del ks.history[:bisect.bisect_left(ks.history, revision, key=lambda e: e.mod_revision)]

    # -- plumbing ---------------------------------------------------------------------------------

    def _check(self, what: str) -> None:
        if self._closed:
            raise StoreUnavailable(f"etcd at {ENDPOINT} is unavailable ({what}): the store was closed")
        if self._unavailable:
            raise StoreUnavailable(f"etcd at {ENDPOINT} is unavailable ({what}): cut off "
                                   "(MemoryStore.unavailable is set)")

    @contextmanager
    def _call(self, what: str) -> Iterator[Keyspace]:
        """One call: refused while unavailable, after the leases that ran out have expired."""
        with self.keyspace.lock:
            self._check(what)
            self.keyspace.expire()
            yield self.keyspace

    def _transaction(self, ks: Keyspace, what: str, expect: list[tuple[bytes, int]], writes: list[_Write],
                     guard: Guard | None) -> _Outcome:
        """etcd's Txn as the store uses it: if every key in `expect` is at its mod_revision (0:
        absent) and the guard holds, apply `writes` as one revision. `GuardFailed` if the guard does
        not hold; a lost compare is the caller's to report (`_Outcome.actual`)."""
        puts = [key for key, value, _ in writes if value is not None]
        if len(set(puts)) < len(puts) or {key for key, value, _ in writes if value is None} & set(puts):
            raise _refused(what, "INVALID_ARGUMENT: etcdserver: duplicate key given in txn request")
        if max(len(expect) + (guard is not None), len(writes)) > MAX_TXN_OPS:
            raise _refused(what, "INVALID_ARGUMENT: etcdserver: too many operations in txn request")
        if sum(len(key) + len(value or b"") for key, value, _ in writes) > MAX_REQUEST_BYTES:
            raise TooLarge(f"etcd at {ENDPOINT} refused the request ({what}): the request is larger than etcd "
                           "takes (--max-request-bytes, 1.5 MiB by default) (INVALID_ARGUMENT: etcdserver: "
                           "request is too large)")
        actual = [entry.mod_revision if (entry := ks.entries.get(key)) else 0 for key, _ in expect]
        holder = ks.entries.get(guard.key.encode()) if guard is not None else None
        if any(a != e for a, (_, e) in zip(actual, expect)) or (
                guard is not None and (holder.create_revision if holder else 0) != guard.create_revision):
            check_guard(guard, holder.create_revision if holder else 0)
            return _Outcome(False, ks.revision, actual)
        # etcd checks the leases of the branch it executes only.
        for _, value, lease in writes:
            if value is not None and lease and lease not in ks.leases:
                raise LeaseExpired(f"etcd at {ENDPOINT} refused the request ({what}): the lease expired or was "
                                   "revoked (NOT_FOUND: etcdserver: requested lease not found)")
        return _Outcome(True, ks.apply(writes), actual)

    # -- reads ------------------------------------------------------------------------------------

    def revision(self) -> int:
        with self._call("revision") as ks:
            return ks.revision

    def read(self, family: Family[R], name: str) -> tuple[Versioned[R] | None, int]:
        key = family.key(name)
        with self._call(f"read {key}") as ks:
            entry = ks.entries.get(key.encode())
            if entry is None:
                return None, ks.revision
            return Versioned(name, family.decode(key, entry.value), entry.mod_revision, entry.create_revision), \
                ks.revision

    def unchanged(self, family: Family[R], revision: int) -> tuple[bool, int]:
        prefix = family.prefix.encode()
        end = pyetcd.utils.prefix_range_end(prefix)
        what = f"check {family.prefix} unchanged"
        with self._call(what) as ks:
            if revision < ks.compacted:
                raise Compacted(f"etcd at {ENDPOINT}: {what}: revision {revision} was compacted (compacted up "
                                f"to {ks.compacted})", ks.compacted)
            keys = ks.in_range(prefix, end)
            # The keys at `revision`: today's, less those made since, plus those deleted since.
            then = set(keys)
            for event in reversed(ks.history[bisect.bisect_right(ks.history, revision, key=lambda e: e.mod_revision):]):
                if prefix <= event.key < end:
                    if event.value is None:
                        then.add(event.key)
                    elif event.create_revision == event.mod_revision:
                        then.discard(event.key)
            return len(then) == len(keys) and all(ks.entries[k].mod_revision <= revision for k in keys), ks.revision

    def count(self, family: Family[R], within: str) -> int:
        prefix = (family.prefix + within).encode()
        with self._call(f"count {prefix.decode()}") as ks:
            return sum(1 for _ in ks.in_range(prefix, pyetcd.utils.prefix_range_end(prefix)))

    def list(self, family: Family[R], within: str = "", where: Mapping[str, str] | None = None) -> Listing[R]:
        prefix = (family.prefix + within).encode()
        items: dict[str, Versioned[R]] = {}
        with self._call(f"list {prefix.decode()}") as ks:
            for key in ks.in_range(prefix, pyetcd.utils.prefix_range_end(prefix)):
                entry = ks.entries[key]
                record = listed(family, key, entry.value, where)
                if record is not None:
                    name = family.name_of(key)
                    items[name] = Versioned(name, record, entry.mod_revision, entry.create_revision)
            return Listing(items, ks.revision)

    def page(self, family: Family[R], within: str = "", after: str = "", limit: int = 500,
             where: Mapping[str, str] | None = None) -> tuple[list[Versioned[R]], str]:
        prefix = (family.prefix + within).encode()
        # The name to go on after is the last key's, whatever it holds (a bad key is no record, and
        # no name a Family would take): the next page starts right after that key.
        start = (family.prefix + after).encode(errors="surrogateescape") + b"\0" if after else prefix
        found = []
        with self._call(f"list {prefix.decode()}") as ks:
            keys = ks.in_range(start, pyetcd.utils.prefix_range_end(prefix))
            for key in keys[:limit]:
                entry = ks.entries[key]
                record = listed(family, key, entry.value, where)
                if record is not None:
                    name = family.name_of(key)
                    found.append(Versioned(name, record, entry.mod_revision, entry.create_revision))
        last = keys[limit - 1] if len(keys) > limit else family.prefix.encode()
        return found, last[len(family.prefix):].decode(errors="surrogateescape")

    # -- writes -----------------------------------------------------------------------------------

    def create(self, family: Family[R], name: str, record: R, *, lease: int | None = None,
               guard: Guard | None = None) -> Versioned[R]:
        key = family.key(name)
        with self._call(f"transaction ({key})") as ks:
            done = self._transaction(ks, f"transaction ({key})", [(key.encode(), 0)],
                                     [(key.encode(), family.encode(record), lease or 0)], guard)
            if not done.succeeded:
                raise already_exists(key)
            return Versioned(name, record, done.revision, done.revision)

    def replace(self, family: Family[R], name: str, record: R, mod_revision: int, *,
                lease: int | None = None, guard: Guard | None = None) -> Versioned[R]:
        key = family.key(name)
        with self._call(f"transaction ({key})") as ks:
            done = self._transaction(ks, f"transaction ({key})", [(key.encode(), mod_revision)],
                                     [(key.encode(), family.encode(record), lease or 0)], guard)
            if not done.succeeded:
                raise changed_since(key, mod_revision)
            written = ks.entries[key.encode()]
            return Versioned(name, record, written.mod_revision, written.create_revision)

    def delete(self, family: Family[R], name: str, *, mod_revision: int | None = None,
               guard: Guard | None = None) -> bool:
        key = family.key(name)
        with self._call(f"transaction ({key})") as ks:
            existed = key.encode() in ks.entries
            expect = [(key.encode(), mod_revision)] if mod_revision else []
            done = self._transaction(ks, f"transaction ({key})", expect, [(key.encode(), None, 0)], guard)
            if not done.succeeded:
                raise changed_since(key, mod_revision or 0)
            return existed

    def transact(self, writes: list[Write], *, guard: Guard | None = None) -> int:
        expect: list[tuple[bytes, int]] = []
        ops: list[_Write] = []
        for write in writes:
            key = write.family.key(write.name).encode()
            if write.expect is not None:
                expect.append((key, write.expect))
            if isinstance(write, Put):
                ops.append((key, write.family.encode(write.record), write.lease or 0))
            elif isinstance(write, Remove):
                ops.append((key, None, 0))
        what = f"transaction ({', '.join(sorted({key.decode() for key, _ in expect})) or 'no compare'})"
        with self._call(what) as ks:
            done = self._transaction(ks, what, expect, ops, guard)
            if not done.succeeded:
                raise first_conflict(writes, done.actual)
            return done.revision

    def delete_all(self, family: Family[R], within: str) -> int:
        if not within:
            raise ValueError("delete_all needs a name prefix")
        prefix = (family.prefix + within).encode()
        with self._call(f"delete range {prefix.decode()}") as ks:
            keys = ks.in_range(prefix, pyetcd.utils.prefix_range_end(prefix))
            ks.apply([(key, None, 0) for key in keys])
            return len(keys)

    # -- raw keys ---------------------------------------------------------------------------------

    def create_key(self, key: str, value: str, lease: int) -> tuple[bool, int, str]:
        with self._call(f"transaction ({key})") as ks:
            done = self._transaction(ks, f"transaction ({key})", [(key.encode(), 0)],
                                     [(key.encode(), value.encode(), lease)], None)
            if done.succeeded:
                return True, done.revision, value
            return False, done.revision, ks.entries[key.encode()].value.decode(errors="replace")

    def read_key(self, key: str) -> tuple[str | None, int]:
        with self._call(f"read {key}") as ks:
            entry = ks.entries.get(key.encode())
            return (entry.value.decode(errors="replace") if entry else None), ks.revision

    # -- leases -----------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        with self._call("lease grant") as ks:
            return ks.grant(max(ttl, MIN_LEASE_TTL))

    def refresh_lease(self, lease_id: int) -> int:
        # etcd answers a keep-alive of an unknown lease with TTL 0, not an error.
        with self._call(f"lease keep-alive {lease_id:x}") as ks:
            return ks.refresh(lease_id)

    def revoke_lease(self, lease_id: int) -> None:
        with self._call(f"lease revoke {lease_id:x}") as ks:
            ks.revoke(lease_id)

    # -- watches ----------------------------------------------------------------------------------

    def watch(self, key: bytes, range_end: bytes | None, start_revision: int,
              idle: float = WATCH_IDLE_S) -> MemoryWatch:
        what = f"watch {key.decode(errors='replace')} from revision {start_revision}"
        with self._call(what) as ks:
            # etcd keeps the compaction revision itself: watching from it is fine.
            if 0 < start_revision < ks.compacted:
                raise Compacted(f"etcd at {ENDPOINT}: {what}: revision {start_revision} was compacted "
                                f"(compacted up to {ks.compacted}); list again", ks.compacted)
            return MemoryWatch(self, what, key, range_end, start_revision or ks.revision + 1, idle)


class MemoryWatch:
    """A watch on a `MemoryStore`, keeping the contract of `watch.Watch` so that `Follower` and
    `Election` work on it unchanged:

    - `next(timeout)` returns every event pending since the last call, in revision order. With none
      pending it waits up to `timeout` seconds of *real* time for another thread's write (so a
      Follower in a thread wakes at once, as with etcd); after `idle` real seconds without anything
      it returns [] (etcd's progress answer); otherwise None. `next(0)` never waits: single-threaded
      scenario code polls with it. Leases are expired (on `ucloud_common.clock`) at every call.
    - While its store is `unavailable` or closed, or once cancelled, `next` raises
      `StoreUnavailable` (the watch is then cancelled, as a broken stream is): watch again from the
      last event's revision + 1 — nothing is missed or repeated, unless that was compacted.
    - `cancel()` is idempotent and may be called from any thread.
    """

    def __init__(self, store: MemoryStore, what: str, key: bytes, range_end: bytes | None, start_revision: int,
                 idle: float) -> None:
        self._store = store
        self._keyspace = store.keyspace
        self._what = what
        self._key, self._end = key, range_end
        self._idle = idle
        self._start = start_revision
        self._cancelled = False
        self._heard_at = time.monotonic()  # real time: idleness is about the stream, not the scenario
        history = self._keyspace.history
        since = bisect.bisect_left(history, start_revision, key=lambda e: e.mod_revision)
        self._pending = [event for event in history[since:] if self._wants(event.key)]
        self._keyspace.watches.append(self)

    @property
    def member(self) -> str:
        return ENDPOINT

    def _wants(self, key: bytes) -> bool:
        if self._end is None:
            return key == self._key
        # etcd's range_end b"\0" means "every key from `key` on".
        return key >= self._key and (self._end == b"\0" or key < self._end)

    def _deliver(self, events: list[Event]) -> None:
        # A watch from a future revision sees nothing before it, as in etcd.
        self._pending.extend(event for event in events
                             if event.mod_revision >= self._start and self._wants(event.key))

    def next(self, timeout: float) -> list[Event] | None:
        deadline = time.monotonic() + timeout
        lock = self._keyspace.lock
        with lock:
            while True:
                if self._cancelled:
                    raise StoreUnavailable(f"etcd at {ENDPOINT} is unavailable ({self._what}): the watch "
                                           "was cancelled")
                try:
                    self._store._check(self._what)
                except StoreUnavailable:
                    self.cancel()
                    raise
                self._keyspace.expire()
                now = time.monotonic()
                if self._pending:
                    events, self._pending = self._pending, []
                    self._heard_at = now
                    return events
                if now - self._heard_at >= self._idle:
                    self._heard_at = now
                    return []
                if now >= deadline:
                    return None
                lock.wait(min(deadline, self._heard_at + self._idle, now + _EXPIRY_POLL_S) - now)

    def cancel(self) -> None:
        with self._keyspace.lock:
            self._cancelled = True
            if self in self._keyspace.watches:
                self._keyspace.watches.remove(self)
            self._keyspace.lock.notify_all()


def _refused(what: str, detail: str) -> StoreRefused:
    return StoreRefused(f"etcd at {ENDPOINT} refused the request ({what}): etcd rejected the request as "
                        f"invalid or too large ({detail})")
