"""List a key family, then follow its changes, so that no change is ever missed.

The pattern of kopf and client-go's informers: list (remembering the revision), watch from that
revision + 1; when the watch breaks (etcd restarted, connection lost), watch again from the last
revision seen; when etcd says that revision was compacted, list again. A periodic resync lists
again anyway, repairing whatever a bug or a lost event could have left behind.

The consumer sees two kinds of items:
- `Snapshot`: the whole family as it is now. Replace everything you knew with it (an item absent
  from it was deleted while you were not watching).
- `Change`: one key was put (`value` set) or deleted (`value` None) at `revision`.
Every change after a snapshot's revision comes exactly once, in revision order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Generic

import pyetcd.utils

from ucloud_common.failures import Failures
from ucloud_common.record import Family, InvalidRecord, R
from ucloud_common.retry import Backoff
from ucloud_common.store.errors import Compacted, StoreUnavailable
from ucloud_common.store.contract import AbstractStore, Listing, Versioned
from ucloud_common.store.watch import Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot(Generic[R]):
    items: dict[str, Versioned[R]]
    revision: int


@dataclass(frozen=True)
class Change(Generic[R]):
    name: str
    value: Versioned[R] | None  # None: the key was deleted
    revision: int
    # The last change of its revision: a transaction's changes come one by one at one revision, and
    # a consumer that shows whole revisions (the API's mirror) waits for this one.
    whole: bool = True


_BACKOFF = Backoff(initial=0.05, maximum=2.0)


class _Relist(Exception):
    """The watch cannot resume where it stopped (compaction, or the resync is due)."""


class Follower(Generic[R]):
    """Iterate over a family's snapshots and changes until `stop()`.

    `start_revision` resumes from a revision remembered earlier (e.g. before a restart); without it,
    following begins with a list. Iterating blocks; run it in the thread that owns the consumer.

    Iterating never ends before `stop()`: whatever fails (etcd unreachable, a member dying, a watch
    falling silent, an unexpected exception from the client or a bug), the follower logs it, backs
    off (up to 2 s, jittered) and resumes from the revision after the last change it yielded, or
    lists again when that revision was compacted. The consumer therefore never needs its own retry
    loop; a consumer whose iteration does end anyway was stopped or died of its own exception.
    """

    _POLL_S = 0.2  # how often a blocked iteration checks for stop() and a due resync

    def __init__(self, store: AbstractStore, family: Family[R], *, resync_interval: float | None = None,
                 start_revision: int | None = None) -> None:
        self._store = store
        self._family = family
        self._resync_interval = resync_interval
        self._next_revision = start_revision
        # When the last listing was: kept across iterations, so that iterating again (after the
        # consumer's iteration raised) resumes where it stopped instead of listing at once.
        self._listed_at = time.monotonic()
        self._stopped = threading.Event()
        self.relists = 0  # how many times following had to list again (observable in tests and logs)
        self.failures = 0  # how many times listing or watching failed and was retried
        self._backoff = _BACKOFF.delays()
        # When etcd last answered (a listing, a watch response, a progress answer: at least every
        # WATCH_IDLE_S on a live stream): how old what this follower gave may be, at most.
        self.heard_at = float("-inf")
        # An etcd outage breaks the watch every couple of seconds: told once, and when it is over.
        self._told = Failures(f"following {family.prefix}", (StoreUnavailable,))

    def _heard(self) -> None:
        """The store answered: the backoff starts afresh, and a failure told is over."""
        self._backoff = _BACKOFF.delays()
        self.heard_at = time.monotonic()
        self._told.succeeded()

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[Snapshot[R] | Change[R]]:
        while not self._stopped.is_set():
            try:
                if self._next_revision is None:
                    listing = self._store.list(self._family)
                    self._listed_at = time.monotonic()
                    self._next_revision = listing.revision + 1
                    self._heard()
                    yield Snapshot(listing.items, listing.revision)
                yield from self._watch()
            except (_Relist, Compacted) as exc:
                if isinstance(exc, Compacted):
                    log.info("following %s: %s", self._family.prefix, exc)
                self._next_revision = None
                self.relists += 1
                continue
            except Exception as exc:  # noqa: BLE001 - never end: a follower that ends leaves its daemon blind for good
                # Resumed from `_next_revision` (or a new listing): nothing missed, nothing repeated.
                self.failures += 1
                self._told.failed(exc)
            # Wait a little, so that a flapping etcd does not turn this loop hot, then resume.
            self._stopped.wait(next(self._backoff))

    def _watch(self) -> Iterator[Change[R]]:
        """Watch from `_next_revision` until the stream fails (raises the store's error) or a relist
        is due (raises `_Relist`)."""
        assert self._next_revision is not None
        prefix = self._family.prefix.encode()
        watch = self._store.watch(prefix, pyetcd.utils.prefix_range_end(prefix), self._next_revision)
        try:
            while not self._stopped.is_set():
                if self._resync_interval and time.monotonic() - self._listed_at > self._resync_interval:
                    log.debug("resync of %s is due", self._family.prefix)
                    raise _Relist()
                events = watch.next(timeout=self._POLL_S)
                if events is None:  # nothing yet
                    continue
                self._heard()
                # etcd sends all of a revision's events in one response, so its last is known here.
                changes = [change for change in map(self._change, events) if change is not None]
                for change, after in zip(changes, [*changes[1:], None]):
                    # Watching again from here misses nothing and repeats nothing (see Watch).
                    self._next_revision = change.revision + 1
                    yield change if after is None or after.revision != change.revision \
                        else replace(change, whole=False)
                if events:  # none in a progress answer (a quiet watch kept alive)
                    self._next_revision = events[-1].mod_revision + 1
        finally:
            watch.cancel()

    def _change(self, event: Event) -> Change[R] | None:
        """The change `event` makes, or None for a key or value that is no record of the family
        (logged): a put or a delete of `/v1/vm/bad key` is nothing a consumer should see, since
        consumers build paths and keys from names (it once killed every agent)."""
        try:
            name = self._family.name_of(event.key)
            if event.value is None:
                return Change(name, None, event.mod_revision)
            record = self._family.decode(event.key, event.value)
        except InvalidRecord as exc:
            log.warning("skipping invalid record %s", exc)
            return None
        return Change(name, Versioned(name, record, event.mod_revision, event.create_revision), event.mod_revision)


def apply(state: dict[str, Versioned[R]], item: Snapshot[R] | Change[R]) -> None:
    """Fold one followed item into a name → record map (the simplest consumer)."""
    if isinstance(item, Snapshot):
        state.clear()
        state.update(item.items)
    elif item.value is None:
        state.pop(item.name, None)
    else:
        state[item.name] = item.value


__all__ = ["Change", "Follower", "Listing", "Snapshot", "apply"]
