"""The store's contract, and the code its two implementations share: `Store` (etcd) and
`MemoryStore` (the same semantics in memory, for tests that replay a cluster in simulated time).

Contract (both implementations keep it; `etcd.py` adds how etcd and its failover keep it):
- Every read returns records with their `mod_revision`; every write is conditional: `create` only if
  the key is absent, `replace` / `delete(mod_revision=…)` only if the key is unchanged since it was
  read, and `update` is read–modify–compare-and-swap retried with jittered backoff until it wins or
  `cas_attempts` races were lost (`Conflict`). Two writers never lose each other's update.
- One global revision counts every change; a transaction that changes anything advances it by
  exactly one, and every key it writes gets that revision as its `mod_revision` (etcd's MVCC). A
  transaction that changes nothing (a failed compare, deleting an absent key) leaves it alone.
- Any write may carry a `Guard` (e.g. "I am still the leader"); if it no longer holds, the write is
  not applied and `GuardFailed` is raised (before any `Conflict` of the same transaction).
- The store being unreachable or slow raises `StoreUnavailable` (a write that raised it may or may
  not have been applied); a request refused as such raises `StoreRefused`; a write naming an expired
  lease raises `LeaseExpired`. Nothing else leaves the store.
- A stored value that is not JSON or does not fit its model raises `InvalidRecord` from `get` and
  `update`, and is logged with its key and skipped by `list` (and by `Follower`).
- Keys attached to a lease vanish when the lease expires (it was not refreshed within its TTL) or is
  revoked: all of one lease's keys in one revision, seen by watches as deletions.
- A watch delivers every change of its keys from its start revision, in revision order, unless that
  revision was compacted (`Compacted`: list again).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol

from ucloud_common.config import Settings
from ucloud_common.record import Family, InvalidRecord, R
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.store.errors import AlreadyExists, Conflict, GuardFailed, NotFound
from ucloud_common.store.watch import WATCH_IDLE_S, Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record as read from the store, with the revisions that a compare-and-swap needs."""

    name: str
    value: R
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Listing(Generic[R]):
    items: dict[str, Versioned[R]]
    revision: int  # the store revision the listing is a snapshot of: watch from revision + 1


@dataclass(frozen=True)
class Put(Generic[R]):
    """Store `record`; `expect` is the key's mod_revision it must still have, 0 for "must not
    exist", None for no expectation."""

    family: Family[R]
    name: str
    record: R
    expect: int | None
    lease: int | None = None


@dataclass(frozen=True)
class Remove(Generic[R]):
    """Delete the key; `expect` as for `Put`."""

    family: Family[R]
    name: str
    expect: int | None


@dataclass(frozen=True)
class Unchanged(Generic[R]):
    """No write: the transaction applies only if the key is still at `expect` (its mod_revision; 0:
    absent). What a write depends on without changing it: a VM on the image it is made from."""

    family: Family[R]
    name: str
    expect: int


Write = Put[Any] | Remove[Any] | Unchanged[Any]


@dataclass(frozen=True)
class Guard:
    """A precondition a write must satisfy besides its own: `key` still has this `create_revision`.

    A leader election hands one out: the leader key is re-created by every new leader, so a deposed
    leader's guarded writes fail even if its process does not know it was deposed yet."""

    key: str
    create_revision: int


class WatchStream(Protocol):
    """What `watch` returns (see `watch.Watch` for the contract both implementations keep)."""

    def next(self, timeout: float) -> list[Event] | None:
        """The next events ([] for a progress answer), or None if nothing came within `timeout`."""

    def cancel(self) -> None:
        """End the watch. Idempotent."""


class AbstractStore(ABC):
    """Typed access to key families with compare-and-swap writes, leases and watches (the module's
    contract). `settings.cas_attempts` bounds `update`; the API also reads other settings from it."""

    settings: Settings
    # A lost compare-and-swap means another writer just made progress: retry at once, but jittered,
    # so that writers that lost together do not collide again.
    _backoff: ClassVar[Backoff] = Backoff(initial=0.002, maximum=0.2)

    # -- reads ------------------------------------------------------------------------------------

    @abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    def get(self, family: Family[R], name: str) -> Versioned[R] | None:
        """The record, or None if absent; `InvalidRecord` if the stored value is not one."""
        return self.read(family, name)[0]

    @abstractmethod
    def read(self, family: Family[R], name: str) -> tuple[Versioned[R] | None, int]:
        """The record (as `get`), and the store's revision it was read at: what a reader that must
        have seen some revision can tell from it (`ucloud_api.auth`)."""

    @abstractmethod
    def list(self, family: Family[R], within: str = "", where: Mapping[str, str] | None = None) -> Listing[R]:
        """Every valid record of the family (whose name starts with `within`, and whose top-level
        fields equal `where`), as one consistent snapshot at `Listing.revision`."""

    @abstractmethod
    def page(self, family: Family[R], within: str = "", after: str = "", limit: int = 500,
             where: Mapping[str, str] | None = None) -> tuple[list[Versioned[R]], str]:
        """Up to `limit` keys of the family (names starting with `within`) after the name `after`,
        in name order, as their valid records matching `where`; and the name to go on after ("" when
        no key follows). Each page is read at its own revision: for a reader that must hold only a
        page at a time (a whole family of events does not fit in a worker), not a snapshot."""

    @abstractmethod
    def unchanged(self, family: Family[R], revision: int) -> tuple[bool, int]:
        """Whether the family holds today the keys it held at `revision`, none changed since (as many
        keys then as now, and none newer than `revision`: a key deleted since would be missing from
        today's count, one made or changed since would be newer), and the present revision. Its keys,
        valid records or not: what proves a mirror of a family nobody wrote to current without listing
        it (a mirror that skips a key that is no record, or keeps only some records, cannot count
        what etcd counts). One read; etcd reads every key of the family to answer, but sends none.
        `Compacted` if `revision` is no longer kept (list instead)."""

    @abstractmethod
    def count(self, family: Family[R], within: str) -> int:
        """How many keys of the family have a name starting with `within`, valid records or not
        (etcd counts them without sending them: cheap enough for a limit checked on every create)."""

    # -- writes -----------------------------------------------------------------------------------

    @abstractmethod
    def create(self, family: Family[R], name: str, record: R, *, lease: int | None = None,
               guard: Guard | None = None) -> Versioned[R]:
        """Store `record` under a new key; `AlreadyExists` if the key exists."""

    @abstractmethod
    def replace(self, family: Family[R], name: str, record: R, mod_revision: int, *,
                lease: int | None = None, guard: Guard | None = None) -> Versioned[R]:
        """One compare-and-swap: store `record` only if the key is still at `mod_revision`
        (`Conflict` otherwise). As in etcd, an absent key is "at revision 0"."""

    def update(self, family: Family[R], name: str, change: Callable[[R], R | None], *,
               guard: Guard | None = None, also: Sequence[Put[Any] | Remove[Any]] = ()) -> Versioned[R]:
        """Read, apply `change`, compare-and-swap; on a lost race, re-read and re-apply.

        `change` gets the current record and returns the new one, or None to write nothing (the
        current one is returned). It may run several times, so it must not have side effects; it
        may raise to abort (e.g. a state-table refusal), and that exception propagates. `also` is
        written in the same transaction as the new record (e.g. the event that tells of it), never
        without it; a `Conflict` on one of its own expectations is a lost race too.
        Raises `NotFound` if the key is absent, `Conflict` after `cas_attempts` lost races.
        """
        key = family.key(name)
        for attempt in sleeps(self._backoff, attempts=self.settings.cas_attempts):
            current = self.get(family, name)
            if current is None:
                raise NotFound(f"{key} does not exist")
            new = change(current.value)
            if new is None:
                return current
            try:
                if not also:
                    return self.replace(family, name, new, current.mod_revision, guard=guard)
                revision = self.transact([Put(family, name, new, current.mod_revision), *also], guard=guard)
                return Versioned(name, new, revision, current.create_revision)
            except Conflict:
                log.debug("lost compare-and-swap on %s (attempt %d)", key, attempt)
        raise Conflict(
            f"gave up updating {key} after {self.settings.cas_attempts} attempts: other writers kept "
            "changing it; retry later"
        )

    @abstractmethod
    def delete(self, family: Family[R], name: str, *, mod_revision: int | None = None,
               guard: Guard | None = None) -> bool:
        """Delete the key (only if still at `mod_revision`, when given). False if it was absent.
        Raises `Conflict` if it changed since `mod_revision`."""

    @abstractmethod
    def transact(self, writes: list[Write], *, guard: Guard | None = None) -> int:
        """Apply several writes atomically, each under its own expectation; return the revision.
        Raises `Conflict` naming the first key that was not as expected (nothing is written then),
        or `GuardFailed`."""

    @abstractmethod
    def delete_all(self, family: Family[R], within: str) -> int:
        """Delete every key of the family whose name starts with `within` (not empty); return how
        many."""

    # -- raw keys (the leader key holds a bare name, not a record) --------------------------------

    @abstractmethod
    def create_key(self, key: str, value: str, lease: int) -> tuple[bool, int, str]:
        """Create `key` holding `value` on `lease` if it is absent. Returns (created, revision,
        holder): the revision of the creation if created, else the value found in the key."""

    @abstractmethod
    def read_key(self, key: str) -> tuple[str | None, int]:
        """The value of a raw key (None if absent), and the store revision it was read at."""

    # -- leases -----------------------------------------------------------------------------------

    @abstractmethod
    def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (etcd raises a TTL below its minimum to that minimum)."""

    @abstractmethod
    def refresh_lease(self, lease_id: int) -> int:
        """Renew the lease; return its TTL, 0 or less if it has already expired (never raises for
        that: a lost lease is an answer, not a failure)."""

    @abstractmethod
    def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease, deleting every key attached to it. Revoking an expired lease is fine."""

    # -- watches ----------------------------------------------------------------------------------

    @abstractmethod
    def watch(self, key: bytes, range_end: bytes | None, start_revision: int,
              idle: float = WATCH_IDLE_S) -> WatchStream:
        """Watch [key, range_end) from `start_revision`; `Compacted` if that is no longer kept."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; every later call raises `StoreUnavailable`."""


# -- pieces of the contract that both implementations compute the same way -------------------------


def listed(family: Family[R], key: bytes, value: bytes, where: Mapping[str, str] | None) -> R | None:
    """The record a listing includes for this key, or None: not matching `where` (checked before
    validating, which is most of the cost of a large listing), or invalid (logged with its key)."""
    if where and not _matches(value, where):
        return None
    try:
        return family.decode(key, value)
    except InvalidRecord as exc:
        log.warning("skipping invalid record %s", exc)
        return None


def _matches(value: bytes, where: Mapping[str, str]) -> bool:
    try:
        data = json.loads(value)
    except ValueError:
        return True  # let decoding report it
    return isinstance(data, dict) and all(data.get(k) == v for k, v in where.items())


def check_guard(guard: Guard | None, holder_create_revision: int) -> None:
    """`GuardFailed` if the guard key's create_revision (0: absent) is not the guard's. Checked
    before any lost compare-and-swap is reported: retrying a write whose guard failed is useless."""
    if guard is not None and holder_create_revision != guard.create_revision:
        raise GuardFailed(f"{guard.key} is no longer the one this process holds")


def already_exists(key: str) -> AlreadyExists:
    return AlreadyExists(f"{key} already exists")


def changed_since(key: str, mod_revision: int) -> Conflict:
    return Conflict(f"{key} changed since revision {mod_revision}", key)


def first_conflict(writes: Sequence[Write], actual: Iterable[int]) -> Conflict:
    """The `Conflict` of a failed transaction: the first write with an expectation whose key's
    actual mod_revision (0: absent; `actual` lists them for those writes, in order) differs."""
    expected = [w for w in writes if w.expect is not None]
    for write, revision in zip(expected, actual):
        if revision != write.expect:
            key = write.family.key(write.name)
            if write.expect == 0:
                return Conflict(f"{key} already exists", key)
            return changed_since(key, write.expect or 0)
    return Conflict("a key changed during the transaction")
