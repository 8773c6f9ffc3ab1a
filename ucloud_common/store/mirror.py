"""A key family kept in memory by a `Follower`: its records at one revision, in key order, with
indexes, for readers that must not ask etcd each time (the API's lists, its token checks).

The Kubernetes API server's watch cache in small: list, watch from the list's revision, list again
after a compaction (all of it the `Follower`'s), and readers that page in key order at the revision
the mirror has reached. A reader that needs a revision at least as new as some write waits for the
mirror to pass it (`Mirror.wait_for`), and reads from etcd instead when it does not in
time: a mirror is never trusted to be fresher than it says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any, Generic

from sortedcontainers import SortedSet

from ucloud_common.record import Family, R
from ucloud_common.retry import Backoff
from ucloud_common.store.contract import AbstractStore, Listing, Versioned
from ucloud_common.store.errors import Compacted
from ucloud_common.store.follow import Change, Follower, Snapshot

log = logging.getLogger(__name__)

_RELIST_BACKOFF = Backoff(initial=0.1, maximum=5.0)

Index = Callable[[Any], str]  # a record → the value it is found under (e.g. its owner); "" for none
Render = Callable[[Versioned[Any]], Any]  # a record → what readers are served (e.g. its JSON), made once


# What `names` answers for a value no record has (callers only read it): one SortedSet made per
# call cost more than the lookup, on every GET of a VM without events.
_NONE: SortedSet = SortedSet()

class Table(Generic[R]):
    """A family's records at `revision`: by name, in name order, and by each index's value.

    Not locked itself: a `Mirror` changes its table only under its lock, and readers read it under
    the same lock (`Mirror.locked`), so that a page is always of one revision."""

    def __init__(self, indexes: Mapping[str, Index], render: Render | None,
                 keep_last: tuple[str, int] | None = None) -> None:
        self.items: dict[str, Versioned[R]] = {}
        self.rendered: dict[str, Any] = {}
        self.revision = 0
        self._indexes = indexes
        self._render = render
        self._names: SortedSet = SortedSet()
        self._by: dict[str, dict[str, SortedSet]] = {index: {} for index in indexes}
        # Where each record was filed, by index (None: its index raised): a removal takes it out of
        # those buckets without asking the index again, which may raise again or answer otherwise.
        self._filed: dict[str, tuple[str | None, ...]] = {}
        # (index, n): at most the last n records in name order of each value of that index; older
        # ones are dropped as newer ones come (an object's events: they sort by time).
        self._keep_last = keep_last

    def replace(self, items: Mapping[str, Versioned[R]], revision: int) -> None:
        """Take a listing at `revision` instead of what the table holds, unless the table is newer
        (a reader refreshed it, `Mirror.refresh`): a table never goes back in time."""
        self.take(self.prepared(items, revision))

    def copies(self) -> tuple[dict[str, Versioned[R]], dict[str, Any]]:
        """What `prepared` needs of this table, taken at one revision (under the mirror's lock)."""
        return dict(self.items), dict(self.rendered)

    def prepared(self, items: Mapping[str, Versioned[R]], revision: int,
                 old: tuple[Mapping[str, Versioned[R]], Mapping[str, Any]] | None = None) -> Table[R]:
        """A new table of `items` at `revision`, keeping the renderings of `old` (this table's
        `copies()`, by default taken now) of records unchanged since. With `old` given it needs no
        lock: a mirror builds it outside its lock and only swaps it in under it (`take`), since
        building one of 10,000 VMs took over a second here, a second the watch and every reader
        waited. Indexes are built in bulk: adding names one by one cost most of that second."""
        old_items, old_rendered = old if old is not None else self.copies()
        fresh: Table[R] = Table(self._indexes, self._render, self._keep_last)
        if self._keep_last is not None:
            items = self._last_of_each(items)
        by_value: dict[str, dict[str, list[str]]] = {index: {} for index in self._indexes}
        for listed in items.values():
            before = old_items.get(listed.name)
            unchanged = before is not None and before.mod_revision == listed.mod_revision
            # A record unchanged since keeps the objects the table holds, and the listing's copy dies
            # young: a resync of 10,000 VMs then adds no long-lived objects, which would each be
            # traversed by every full collection of the garbage collector (`ucloud_api.worker`).
            item = before if unchanged and before is not None else listed
            kept = old_rendered.get(item.name) if unchanged else None
            fresh.items[item.name] = item
            filed = fresh._filed[item.name] = fresh._index_values(item)
            for index, value in zip(self._indexes, filed):
                if value is not None:
                    by_value[index].setdefault(value, []).append(item.name)
            if self._render is not None:
                fresh.rendered[item.name] = kept if kept is not None else fresh._rendering(item)
        fresh._names = SortedSet(fresh.items)
        fresh._by = {index: {value: SortedSet(names) for value, names in values.items()}
                     for index, values in by_value.items()}
        fresh.revision = revision
        return fresh

    def _last_of_each(self, items: Mapping[str, Versioned[R]]) -> dict[str, Versioned[R]]:
        """`items` but for those past the last `n` in name order of their `keep_last` index's value."""
        assert self._keep_last is not None
        index, n = self._keep_last
        of = self._indexes[index]
        by_value: dict[str | None, list[str]] = {}
        for item in items.values():
            try:
                value: str | None = of(item.value)
            except Exception:  # noqa: BLE001 - filed in no bucket (logged as it is taken in): never dropped
                value = None
            by_value.setdefault(value, []).append(item.name)
        kept = {name for value, names in by_value.items()
                for name in (names if value is None else sorted(names)[-n:])}
        return {name: item for name, item in items.items() if name in kept}

    def take(self, fresh: Table[R]) -> None:
        """Become `fresh` (from `prepared`), unless this table is newer."""
        if fresh.revision < self.revision:
            return
        self.items, self.rendered, self._names, self._by = fresh.items, fresh.rendered, fresh._names, fresh._by
        self._filed = fresh._filed
        self.revision = fresh.revision

    def apply(self, change: Change[R]) -> None:
        # Older than the table: already in a listing it took (see replace). Not so one of the same
        # revision: a transaction changes its keys at one revision, each a change of its own.
        if change.revision < self.revision:
            return
        self._remove(change.name)
        if change.value is not None:
            self._put(change.value)
        self.revision = change.revision

    def _put(self, item: Versioned[R]) -> None:
        self.items[item.name] = item
        self._names.add(item.name)
        filed = self._filed[item.name] = self._index_values(item)
        for index, value in zip(self._indexes, filed):
            if value is not None:
                bucket = self._by[index].get(value)
                if bucket is None:
                    bucket = self._by[index][value] = SortedSet()
                bucket.add(item.name)
        if self._render is not None:
            self.rendered[item.name] = self._rendering(item)
        if self._keep_last is not None:
            index, n = self._keep_last
            value = filed[list(self._indexes).index(index)]
            bucket = self._by[index].get(value) if value is not None else None
            while bucket is not None and len(bucket) > n:
                self._remove(bucket[0])  # (the last one removed takes the bucket with it)
                bucket = self._by[index].get(value)

    # An index or a render that raises (a bug, a record it cannot take) costs that record its place
    # in that index, or its rendering made in advance (readers render it when they show it), and is
    # logged; never the mirror: one such record once stopped the whole family's mirror in every
    # worker, listing the family again and again as fast as etcd answered.

    def _index_values(self, item: Versioned[R]) -> tuple[str | None, ...]:
        values: list[str | None] = []
        for index, of in self._indexes.items():
            try:
                values.append(of(item.value))
            except Exception as exc:  # noqa: BLE001 - logged, and the record stays out of this index only
                log.warning("mirror: record %s is in no %r index: %s: %s", item.name, index, type(exc).__name__, exc)
                values.append(None)
        return tuple(values)

    def _rendering(self, item: Versioned[R]) -> Any:
        assert self._render is not None
        try:
            return self._render(item)
        except Exception as exc:  # noqa: BLE001 - logged; readers render it themselves
            log.warning("mirror: record %s is not rendered in advance: %s: %s", item.name, type(exc).__name__, exc)
            return None

    def _remove(self, name: str) -> None:
        old = self.items.pop(name, None)
        if old is None:
            return
        self._names.discard(name)
        self.rendered.pop(name, None)
        for index, value in zip(self._indexes, self._filed.pop(name, ())):
            if value is None:
                continue
            bucket = self._by[index].get(value)
            if bucket is not None:
                bucket.discard(name)
                if not bucket:
                    del self._by[index][value]

    def names(self, index: str | None = None, value: str = "") -> SortedSet:
        """Every name (or those whose `index` is `value`), sorted."""
        return self._names if index is None else self._by[index].get(value, _NONE)

    def page(self, after: str, limit: int | None, index: str | None = None, value: str = "",
             keep: Callable[[R], bool] | None = None) -> tuple[list[Versioned[R]], bool]:
        """Up to `limit` records (all if None) named after `after` in name order, found by `index`
        (if given) and kept by `keep`; and whether more follow. Name order is what makes paging
        through a changing family safe: a record is never shown twice, and one that exists from
        the first page to the last is always shown, wherever others come and go."""
        names = self.names(index, value).irange(minimum=after or None, inclusive=(not after, True))
        if keep is None:  # (most pages: a user's own records, found by the owner index)
            found = [self.items[name] for name in islice(names, None if limit is None else limit + 1)]
            more = limit is not None and len(found) > limit
            return (found[:limit] if more else found), more
        found = []
        for name in names:
            item = self.items[name]
            if keep is not None and not keep(item.value):
                continue
            if limit is not None and len(found) == limit:
                return found, True
            found.append(item)
        return found, False


class Mirror(Generic[R]):
    """A family followed into a `Table` by a thread of its own, from `start()` until `stop()`.

    Readers take `locked()` and read the table; `wait_for(revision)` first when they need to have
    seen a write. `ready` is False until the first listing arrived (etcd unreachable at start), and
    again from a failure to take in a change until the listing that repairs it."""

    def __init__(self, store: AbstractStore, family: Family[R], indexes: Mapping[str, Index] | None = None,
                 render: Render | None = None, stale_after: float | None = None,
                 resync_interval: float | None = None, keep_last: tuple[str, int] | None = None) -> None:
        self.family = family
        # Seconds after which a mirror that has not heard from etcd (its watch cut off: a partition,
        # a member gone) is no longer trusted by `wait_for`, so that its readers go to etcd. Without
        # it, a worker cut off from etcd went on serving what it last knew, and accepting the
        # tokens revoked meanwhile, for as long as the cut lasted. None: trusted however old.
        self.stale_after = stale_after
        self._refreshed_at = float("-inf")
        self._changed_at = float("-inf")  # when the table last took in a change of the family
        self.refreshing = threading.Lock()  # held by the one reader listing for `refresh` (never the table's lock)
        self.indexes = dict(indexes or {})
        self.render = render
        self.table: Table[R] = Table(self.indexes, render, keep_last)
        self.ready = False
        self.relisted_after_failure = 0
        self._changed = threading.Condition()
        self._store = store
        self._stopped = False
        self._stop = threading.Event()  # wakes the pause between two failed attempts
        # Listing again on this cadence repairs a change the watch lost, as every daemon's follower
        # does (a lost event costs one cadence): a mirror once kept a missed KILLED for good.
        self._resync_interval = resync_interval
        self._follower = Follower(store, family, resync_interval=resync_interval)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"mirror {family.prefix}")

    def start(self) -> Mirror[R]:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._stop.set()
            self._follower.stop()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def relists(self) -> int:
        """How many times the follower listed again (a compaction, a resync)."""
        return self._follower.relists

    def _run(self) -> None:
        # The follower never ends before stop(). Should taking in a change fail (a bug), the mirror
        # lists the family again rather than go on with a hole, after a pause that grows while it
        # keeps failing: at once and forever, it listed the family hundreds of times a second.
        pauses = _RELIST_BACKOFF.delays()
        while True:
            try:
                self._take_in()
                return
            except Exception:  # a mirror that stops leaves its readers on stale data for good
                log.exception("mirror of %s: taking in a change failed; listing again", self.family.prefix)
                if self._stop.wait(next(pauses)):
                    return
                with self._changed:
                    if self._stopped:
                        return
                    self._follower = Follower(self._store, self.family, resync_interval=self._resync_interval)
                    self.relisted_after_failure += 1

    def _take_in(self) -> None:
        """Apply what the follower yields, a transaction's changes under one hold of the lock, so
        that readers see whole revisions only (the follower yields the rest of a revision from the
        response in hand: the lock is never held across a wait for etcd)."""
        held = False
        try:
            for item in self._follower:
                fresh = None
                if isinstance(item, Snapshot) and not held:  # (a snapshot never comes mid-revision)
                    with self._changed:
                        old = self.table.copies()
                    fresh = self.table.prepared(item.items, item.revision, old)  # without the lock
                if not held:
                    self._changed.acquire()
                    held = True
                if isinstance(item, Snapshot):
                    if fresh is not None:
                        self.table.take(fresh)
                    else:
                        self.table.replace(item.items, item.revision)
                    self.ready = True
                else:
                    self.table.apply(item)
                if isinstance(item, Snapshot) or item.whole:
                    self._changed_at = time.monotonic()
                    self._changed.notify_all()
                    self._changed.release()
                    held = False
        finally:
            if held:
                # Left halfway through a revision (taking in a change failed): what the table holds
                # is no revision at all. Readers go to etcd until the next listing is taken in.
                self.ready = False
                self._changed.release()

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Whether the mirror is ready, has seen `revision` and heard from etcd within `stale_after`
        (waiting up to `timeout` s for it). One not loaded yet is not waited for: its first listing
        may take long, and etcd answers meanwhile."""
        with self._changed:
            if not self.ready:
                return False
            return self._changed.wait_for(
                lambda: self.ready and self.table.revision >= revision and self._current(), timeout)

    def _current(self) -> bool:
        """Whether etcd was heard lately enough: by the follower, or by a reader's listing (`refresh`)."""
        if self.stale_after is None:
            return True
        return time.monotonic() - max(self._follower.heard_at, self._refreshed_at) <= self.stale_after

    def refresh(self, listing: Listing[R]) -> None:
        """Take a listing a reader made from etcd because the mirror was not fresh enough: a family
        nobody writes never delivers the revision a reader waits for, and a listing proves it."""
        listed_at = time.monotonic()  # (a listing made before the call: a bound on its age)
        with self._changed:
            old = self.table.copies()
        fresh = self.table.prepared(listing.items, listing.revision, old)  # without the lock (see prepared)
        with self._changed:
            self.table.take(fresh)
            if self.table.revision == listing.revision:
                self._refreshed_at = max(self._refreshed_at, listed_at)
                # Ready only when taken: a table newer than the listing may be one that taking in a
                # change left halfway (not ready until a listing at least as new repairs it).
                self.ready = True
            self._changed.notify_all()

    def quiet_for(self) -> float:
        """Seconds since the table last took in a change of the family from the watch."""
        return time.monotonic() - self._changed_at

    def confirm(self) -> bool:
        """Ask etcd whether the family changed after the table's revision (`Store.unchanged`, one
        read); if not, the table is current at etcd's present revision, which readers waiting for a
        later write's revision (to another family) may then have. Whether it was. A family nobody
        writes to never delivers such a revision, and was listed whole to prove it.

        Sound only because `unchanged` compares etcd's own counts, then and now: the table's size
        is no count of the family's keys (it skips keys that are no records, and keeps only the last
        events of each object), and a deletion it did not see once passed for no change at all;
        the table then claimed a revision past the deletion, and dropped the deletion when its watch
        delivered it (`Table.apply`), keeping a deleted record until the next resync."""
        asked_at = time.monotonic()  # (a bound on the answer's age, as for a listing)
        with self._changed:
            revision, ready = self.table.revision, self.ready
        if not ready:
            return False
        try:
            same, present = self._store.unchanged(self.family, revision)
        except Compacted:
            return False  # (a table quiet for longer than etcd keeps history: a listing proves it)
        with self._changed:
            # Unless the table moved meanwhile (then the watch is ahead of the answer anyway).
            if not (same and self.ready and self.table.revision == revision):
                return False
            self.table.revision = present
            self._refreshed_at = max(self._refreshed_at, asked_at)
            self._changed.notify_all()
            return True

    @contextmanager
    def locked(self) -> Iterator[Table[R]]:
        """The table, unchanged until the block ends (one revision)."""
        with self._changed:
            yield self.table


__all__ = ["Index", "Mirror", "Render", "Table"]
