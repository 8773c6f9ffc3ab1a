"""A key family kept in memory by a `Follower`: its records at one revision, in key order, with
indexes, for readers that must not ask etcd each time (the API's lists, its token checks).

The Kubernetes API server's watch cache in small: list, watch from the list's revision, list again
after a compaction (all of it the `Follower`'s), and readers that page in key order at the revision
the mirror has reached. A reader that needs a revision at least as new as some write waits for the
mirror to pass it (`Mirror.wait_for`), and reads from etcd instead (`Table.of`) when it does not in
time: a mirror is never trusted to be fresher than it says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic

from sortedcontainers import SortedSet

from ucloud_common.record import Family, R
from ucloud_common.store.contract import AbstractStore, Listing, Versioned
from ucloud_common.store.follow import Change, Follower, Snapshot

log = logging.getLogger(__name__)

Index = Callable[[Any], str]  # a record → the value it is found under (e.g. its owner); "" for none
Render = Callable[[Versioned[Any]], Any]  # a record → what readers are served (e.g. its JSON), made once


class Table(Generic[R]):
    """A family's records at `revision`: by name, in name order, and by each index's value.

    Not locked itself: a `Mirror` changes its table only under its lock, and readers read it under
    the same lock (`Mirror.locked`), so that a page is always of one revision."""

    def __init__(self, indexes: Mapping[str, Index], render: Render | None) -> None:
        self.items: dict[str, Versioned[R]] = {}
        self.rendered: dict[str, Any] = {}
        self.revision = 0
        self._indexes = indexes
        self._render = render
        self._names: SortedSet = SortedSet()
        self._by: dict[str, dict[str, SortedSet]] = {index: {} for index in indexes}

    @classmethod
    def of(cls, listing: Listing[R], indexes: Mapping[str, Index], render: Render | None) -> Table[R]:
        """A table of a listing read from etcd (what a reader uses when the mirror is not fresh enough)."""
        table: Table[R] = cls(indexes, render)
        table.replace(listing.items, listing.revision)
        return table

    def replace(self, items: Mapping[str, Versioned[R]], revision: int) -> None:
        """Take a listing at `revision` instead of what the table holds, unless the table is newer
        (a reader refreshed it, `Mirror.refresh`): a table never goes back in time."""
        if revision < self.revision:
            return
        kept = {name: made for name, made in self.rendered.items()
                if name in items and items[name].mod_revision == self.items[name].mod_revision}
        fresh: Table[R] = Table(self._indexes, self._render)
        for item in items.values():
            fresh._put(item, kept.get(item.name))
        # Swapped in whole: a render that raises halfway leaves the table as it was.
        self.items, self.rendered, self._names, self._by = fresh.items, fresh.rendered, fresh._names, fresh._by
        self.revision = revision

    def apply(self, change: Change[R]) -> None:
        # Older than the table: already in a listing it took (see replace). Not so one of the same
        # revision: a transaction changes its keys at one revision, each a change of its own.
        if change.revision < self.revision:
            return
        self._remove(change.name)
        if change.value is not None:
            self._put(change.value)
        self.revision = change.revision

    def _put(self, item: Versioned[R], rendered: Any = None) -> None:
        self.items[item.name] = item
        self._names.add(item.name)
        for index, of in self._indexes.items():
            self._by[index].setdefault(of(item.value), SortedSet()).add(item.name)
        if self._render is not None:
            self.rendered[item.name] = rendered if rendered is not None else self._render(item)

    def _remove(self, name: str) -> None:
        old = self.items.pop(name, None)
        if old is None:
            return
        self._names.discard(name)
        self.rendered.pop(name, None)
        for index, of in self._indexes.items():
            bucket = self._by[index].get(of(old.value))
            if bucket is not None:
                bucket.discard(name)
                if not bucket:
                    del self._by[index][of(old.value)]

    def names(self, index: str | None = None, value: str = "") -> SortedSet:
        """Every name (or those whose `index` is `value`), sorted."""
        return self._names if index is None else self._by[index].get(value, SortedSet())

    def page(self, after: str, limit: int | None, index: str | None = None, value: str = "",
             keep: Callable[[R], bool] | None = None) -> tuple[list[Versioned[R]], bool]:
        """Up to `limit` records (all if None) named after `after` in name order, found by `index`
        (if given) and kept by `keep`; and whether more follow. Name order is what makes paging
        through a changing family safe: a record is never shown twice, and one that exists from
        the first page to the last is always shown, wherever others come and go."""
        found: list[Versioned[R]] = []
        for name in self.names(index, value).irange(minimum=after or None, inclusive=(not after, True)):
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
    seen a write. `ready` is False until the first listing arrived (etcd unreachable at start)."""

    def __init__(self, store: AbstractStore, family: Family[R], indexes: Mapping[str, Index] | None = None,
                 render: Render | None = None) -> None:
        self.family = family
        self.indexes = dict(indexes or {})
        self.render = render
        self.table: Table[R] = Table(self.indexes, render)
        self.ready = False
        self.relisted_after_failure = 0
        self._changed = threading.Condition()
        self._store = store
        self._stopped = False
        self._follower = Follower(store, family)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"mirror {family.prefix}")

    def start(self) -> Mirror[R]:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._follower.stop()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def relists(self) -> int:
        """How many times the follower listed again (a compaction, a resync)."""
        return self._follower.relists

    def _run(self) -> None:
        # The follower never ends before stop(). Should taking in a change fail (a bug, a record a
        # render cannot show), the mirror lists the family again rather than go on with a hole.
        while True:
            try:
                self._take_in()
                return
            except Exception:  # a mirror that stops leaves its readers on stale data for good
                log.exception("mirror of %s: taking in a change failed; listing again", self.family.prefix)
                with self._changed:
                    if self._stopped:
                        return
                    self._follower = Follower(self._store, self.family)
                    self.relisted_after_failure += 1

    def _take_in(self) -> None:
        """Apply what the follower yields, a transaction's changes under one hold of the lock, so
        that readers see whole revisions only (the follower yields the rest of a revision from the
        response in hand: the lock is never held across a wait for etcd)."""
        held = False
        try:
            for item in self._follower:
                if not held:
                    self._changed.acquire()
                    held = True
                if isinstance(item, Snapshot):
                    self.table.replace(item.items, item.revision)
                    self.ready = True
                else:
                    self.table.apply(item)
                if isinstance(item, Snapshot) or item.whole:
                    self._changed.notify_all()
                    self._changed.release()
                    held = False
        finally:
            if held:
                self._changed.release()

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Whether the mirror is ready and has seen `revision` (waiting up to `timeout` s for it). One
        not loaded yet is not waited for: its first listing may take long, and etcd answers meanwhile."""
        with self._changed:
            if not self.ready:
                return False
            return self._changed.wait_for(lambda: self.ready and self.table.revision >= revision, timeout)

    def refresh(self, listing: Listing[R]) -> None:
        """Take a listing a reader made from etcd because the mirror was not fresh enough: a family
        nobody writes never delivers the revision a reader waits for, and a listing proves it."""
        with self._changed:
            self.table.replace(listing.items, listing.revision)
            self.ready = True
            self._changed.notify_all()

    @contextmanager
    def locked(self) -> Iterator[Table[R]]:
        """The table, unchanged until the block ends (one revision)."""
        with self._changed:
            yield self.table


__all__ = ["Index", "Mirror", "Render", "Table"]
