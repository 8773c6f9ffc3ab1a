"""Following a family, on a real etcd and on MemoryStore: no change missed, none repeated — across
restarts, broken connections and compaction."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyetcd.exceptions
import pytest
from pytest_mock import MockerFixture

from tests.helpers.collector import Collector
from tests.helpers.etcd import EtcdServer
from tests.helpers.proxy import CuttableProxy
from ucloud_common.config import Settings
from ucloud_common.specs import Specs
from ucloud_common.store import (
    AbstractStore,
    Follower,
    MemoryStore,
    Put,
    Store,
    StoreUnavailable,
)
from ucloud_common.vm import VM, VMS


@pytest.fixture
def store(any_store: AbstractStore) -> AbstractStore:
    return any_store


def compact(store: AbstractStore, revision: int) -> None:
    """Compact the store's history up to `revision`, as an operator (or etcd's auto-compaction) does."""
    if isinstance(store, MemoryStore):
        store.compact(revision)
    else:
        assert isinstance(store, Store)
        store.client.compact(revision)


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    running: list[Collector] = []
    yield running
    for collector in running:
        collector.stop()


def write_retrying(store: AbstractStore, uuid: str) -> None:
    """Create a VM, retrying while etcd comes back (a create that raised may have been applied)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            if store.get(VMS, uuid) is None:
                store.create(VMS, uuid, a_vm(uuid))
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_snapshot_then_every_change_once_in_order(store: AbstractStore, collectors: list[Collector]) -> None:
    store.create(VMS, "before", a_vm("before"))
    collector = Collector(Follower(store, VMS))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    assert list(collector.snapshots()[0].items) == ["before"]
    store.create(VMS, "a", a_vm("a"))
    store.update(VMS, "a", lambda vm: vm.evolve(restarts=1))
    store.delete(VMS, "before")
    collector.wait_for(lambda: len(collector.changes()) == 3)
    changes = collector.changes()
    assert [(c.name, c.value is None) for c in changes] == [("a", False), ("a", False), ("before", True)]
    assert changes[1].value is not None and changes[1].value.value.restarts == 1
    assert [c.revision for c in changes] == sorted(c.revision for c in changes)
    assert sorted(collector.state) == ["a"]


def test_a_transactions_changes_come_at_one_revision_the_last_one_whole(
        store: AbstractStore, collectors: list[Collector]) -> None:
    collector = Collector(Follower(store, VMS))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    store.create(VMS, "alone", a_vm("alone"))
    store.transact([Put(VMS, name, a_vm(name), 0) for name in ("t1", "t2", "t3")])
    collector.wait_for(lambda: len(collector.changes()) == 4)
    changes = collector.changes()
    assert [(c.name, c.whole) for c in changes] == [("alone", True), ("t1", False), ("t2", False), ("t3", True)]
    assert len({c.revision for c in changes[1:]}) == 1


def test_a_follower_takes_progress_answers_as_nothing(store: AbstractStore, collectors: list[Collector],
                                                     mocker: MockerFixture) -> None:
    mocker.patch.object(store, "watch", side_effect=functools.partial(store.watch, idle=0.2))
    follower = Follower(store, VMS)
    collector = Collector(follower)
    collectors.append(collector)
    time.sleep(1.5)  # several idle periods: each an answer without events
    store.create(VMS, "a", a_vm("a"))
    collector.wait_for(lambda: len(collector.changes()) == 1)
    assert follower.failures == 0 and follower.relists == 0


@pytest.mark.etcd_only("restarts etcd")
def test_a_watch_resumes_across_an_etcd_restart_without_missing_or_repeating(
        etcd_server: EtcdServer, store: AbstractStore, settings: Settings, collectors: list[Collector]) -> None:
    follower = Follower(Store(settings), VMS)
    collector = Collector(follower)
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    for i in range(20):
        store.create(VMS, f"vm{i:02}", a_vm(f"vm{i:02}"))
    collector.wait_for(lambda: len(collector.changes()) == 20)
    etcd_server.restart()
    for i in range(20, 40):
        write_retrying(store, f"vm{i:02}")
    collector.wait_for(lambda: len(collector.changes()) >= 40, timeout=30)
    time.sleep(0.5)  # anything repeated would arrive now
    names = [c.name for c in collector.changes()]
    assert names == [f"vm{i:02}" for i in range(40)]
    assert len(collector.snapshots()) == 1, "resuming from a revision etcd still has needs no relist"
    assert follower.relists == 0


@pytest.mark.etcd_only("kills etcd")
def test_a_follower_survives_ten_etcd_crashes_in_a_row_without_missing_or_repeating(
        etcd_server: EtcdServer, store: AbstractStore, settings: Settings, collectors: list[Collector]) -> None:
    watching = Store(settings)
    follower = Follower(watching, VMS)
    collector = Collector(follower)
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    expected: list[str] = []
    # Downtimes vary so that the follower's retries land in every phase of a restart: refused
    # connections, and (every other time) a member that accepts connections but answers nothing
    # for 3 s, longer than etcd_timeout, as a member still starting on a loaded machine does.
    for crash, downtime in enumerate([0.0, 0.3, 1.0, 0.1, 1.5, 0.6, 0.0, 2.0, 0.2, 0.8]):
        for i in range(5):
            name = f"c{crash:02}-{i}"
            write_retrying(store, name)
            expected.append(name)
        etcd_server.kill()
        time.sleep(downtime)
        etcd_server.start()
        if crash % 2:
            etcd_server.stall(3.0)
    for i in range(5):
        write_retrying(store, f"last-{i}")
        expected.append(f"last-{i}")
    collector.wait_for(lambda: len(collector.changes()) >= len(expected), timeout=60)
    time.sleep(0.5)  # anything repeated would arrive now
    assert [c.name for c in collector.changes()] == expected
    assert collector.alive(), f"the follower ended: {collector.ended}"
    assert len(collector.snapshots()) == 1 and follower.relists == 0
    collector.stop()
    watching.close()


@pytest.mark.etcd_only("cuts the TCP connection (tests/unit/test_memory_store.py has the same story on MemoryStore)")
def test_a_watcher_cut_off_past_a_compaction_relists_and_sees_the_final_state(
        etcd_server: EtcdServer, store: AbstractStore, settings: Settings, collectors: list[Collector],
        caplog: pytest.LogCaptureFixture) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd_server.client_port)
    behind_proxy = Store(settings.model_copy(update={"etcd_endpoints": [
        type(settings.etcd_endpoints[0]).parse(proxy.endpoint)]}))
    for name in ("keep", "change", "drop"):
        store.create(VMS, name, a_vm(name))
    follower = Follower(behind_proxy, VMS)
    collector = Collector(follower)
    collectors.append(collector)
    collector.wait_for(lambda: sorted(collector.state) == ["change", "drop", "keep"])

    proxy.cut()
    store.update(VMS, "change", lambda vm: vm.evolve(restarts=7))
    store.delete(VMS, "drop")
    store.create(VMS, "new", a_vm("new"))
    compact(store, store.revision())
    with caplog.at_level(logging.INFO, logger="ucloud_common.store.follow"):
        proxy.restore()
        collector.wait_for(lambda: sorted(collector.state) == ["change", "keep", "new"], timeout=20)
    assert collector.state["change"].value.restarts == 7
    assert follower.relists == 1 and len(collector.snapshots()) == 2
    assert "was compacted" in caplog.text
    proxy.cut()


def test_resuming_from_a_compacted_revision_relists(store: AbstractStore, collectors: list[Collector]) -> None:
    store.create(VMS, "a", a_vm("a"))
    remembered = store.revision()
    store.create(VMS, "b", a_vm("b"))
    store.delete(VMS, "a")
    compact(store, store.revision())
    follower = Follower(store, VMS, start_revision=remembered + 1)
    collector = Collector(follower)
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.snapshots()) == 1)
    assert sorted(collector.state) == ["b"] and follower.relists == 1


def test_periodic_resync_lists_again(store: AbstractStore, collectors: list[Collector]) -> None:
    store.create(VMS, "a", a_vm("a"))
    collector = Collector(Follower(store, VMS, resync_interval=0.5))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.snapshots()) >= 3, timeout=5)
    store.create(VMS, "b", a_vm("b"))
    collector.wait_for(lambda: sorted(collector.state) == ["a", "b"])


def test_garbage_in_the_stream_is_skipped_with_a_log_line(
        store: AbstractStore, collectors: list[Collector], caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector(Follower(store, VMS))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    with caplog.at_level(logging.WARNING):
        store.create_key("/v1/vm/garbage", "\x00\x01", store.grant_lease(60))
        store.create(VMS, "after", a_vm("after"))
        collector.wait_for(lambda: "after" in collector.state)
    assert [c.name for c in collector.changes()] == ["after"]
    assert "skipping invalid record /v1/vm/garbage" in caplog.text


class BreakingCall:
    """A watch stream that delivers `good` responses from the real one, then fails with `error`."""

    def __init__(self, real: Any, good: int, error: BaseException) -> None:
        self._real, self._left, self._error = real, good, error

    def __iter__(self) -> BreakingCall:
        return self

    def __next__(self) -> Any:
        if self._left == 0:
            raise self._error
        self._left -= 1
        return next(self._real)

    def cancel(self) -> None:
        self._real.cancel()


@pytest.mark.etcd_only("makes gRPC and the etcd client library fail")
def test_a_follower_keeps_going_whatever_the_client_library_raises(
        store: AbstractStore, settings: Settings, collectors: list[Collector], mocker: MockerFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """The watch call fails as the library did in the field (WatchTimedOut), with an arbitrary
    exception, and mid-stream with an arbitrary exception: the follower logs each, backs off,
    resumes, and misses or repeats nothing."""
    watching = Store(settings)
    member = watching._members._members[0]
    real_watch = member.watch.Watch
    failures = iter([
        lambda *a, **kw: (_ for _ in ()).throw(pyetcd.exceptions.WatchTimedOut()),
        lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("a bug in the client")),
        # created + the first batch of events, then the stream dies of something unexpected
        lambda *a, **kw: BreakingCall(real_watch(*a, **kw), 2, RuntimeError("the stream died oddly")),
    ])
    mocker.patch.object(member.watch, "Watch", side_effect=lambda *a, **kw: next(failures, real_watch)(*a, **kw))
    store.create(VMS, "before", a_vm("before"))
    with caplog.at_level(logging.WARNING, logger="ucloud_common.store.follow"):
        follower = Follower(watching, VMS)
        collector = Collector(follower)
        collectors.append(collector)
        collector.wait_for(lambda: len(collector.snapshots()) == 1)
        for i in range(6):
            write_retrying(store, f"vm{i}")
        collector.wait_for(lambda: len(collector.changes()) >= 6)
    time.sleep(0.5)  # anything repeated would arrive now
    assert [c.name for c in collector.changes()] == [f"vm{i}" for i in range(6)]
    assert collector.alive() and follower.failures == 3 and follower.relists == 0
    assert "WatchTimedOut" in caplog.text or "not confirmed in time" in caplog.text
    assert "a bug in the client" in caplog.text and "the stream died oddly" in caplog.text
    watching.close()


def test_a_quiet_watch_is_kept_alive_by_progress_answers(store: AbstractStore) -> None:
    """Nothing changes, yet the watch hears from etcd after every idle period (a progress answer,
    never taken as a change), so silence means a dead stream and nothing else."""
    watch = store.watch(b"/v1/vm/", b"/v1/vm0", store.revision() + 1, idle=0.3)
    try:
        answers = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            events = watch.next(timeout=0.1)
            if events is not None:
                answers.append(events)
        assert len(answers) >= 3 and all(events == [] for events in answers)
        store.create(VMS, "a", a_vm("a"))
        events = None
        while not events:
            events = watch.next(timeout=1.0)
        assert [e.key for e in events] == [b"/v1/vm/a"] and events[0].value is not None
    finally:
        watch.cancel()
