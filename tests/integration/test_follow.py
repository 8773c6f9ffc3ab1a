"""Following a family against a real etcd: no change missed, none repeated — across restarts,
broken connections and compaction."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.etcd import EtcdServer
from tests.helpers.proxy import CuttableProxy
from ucloud_common.config import Settings
from ucloud_common.specs import Specs
from ucloud_common.store import Change, Follower, Snapshot, Store, StoreUnavailable, Versioned, apply
from ucloud_common.vm import VMS, VM


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


class Collector:
    """Runs a Follower in a thread and records everything it yields."""

    def __init__(self, follower: Follower[VM]) -> None:
        self.follower = follower
        self.items: list[Snapshot[VM] | Change[VM]] = []
        self.state: dict[str, Versioned[VM]] = {}
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for item in self.follower:
            with self._lock:
                self.items.append(item)
                apply(self.state, item)

    def changes(self) -> list[Change[VM]]:
        with self._lock:
            return [item for item in self.items if isinstance(item, Change)]

    def snapshots(self) -> list[Snapshot[VM]]:
        with self._lock:
            return [item for item in self.items if isinstance(item, Snapshot)]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if condition():
                    return
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout} s; saw {len(self.items)} items")

    def stop(self) -> None:
        self.follower.stop()
        self._thread.join(timeout=5)


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    running: list[Collector] = []
    yield running
    for collector in running:
        collector.stop()


def write_retrying(store: Store, uuid: str) -> None:
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


def test_snapshot_then_every_change_once_in_order(store: Store, collectors: list[Collector]) -> None:
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


def test_a_watch_resumes_across_an_etcd_restart_without_missing_or_repeating(
        etcd_server: EtcdServer, store: Store, settings: Settings, collectors: list[Collector]) -> None:
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


def test_a_watcher_cut_off_past_a_compaction_relists_and_sees_the_final_state(
        etcd_server: EtcdServer, store: Store, settings: Settings, collectors: list[Collector],
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
    store.client.compact(store.revision())
    with caplog.at_level(logging.INFO, logger="ucloud_common.store.follow"):
        proxy.restore()
        collector.wait_for(lambda: sorted(collector.state) == ["change", "keep", "new"], timeout=20)
    assert collector.state["change"].value.restarts == 7
    assert follower.relists == 1 and len(collector.snapshots()) == 2
    assert "was compacted" in caplog.text
    proxy.cut()


def test_resuming_from_a_compacted_revision_relists(store: Store, collectors: list[Collector]) -> None:
    store.create(VMS, "a", a_vm("a"))
    remembered = store.revision()
    store.create(VMS, "b", a_vm("b"))
    store.delete(VMS, "a")
    store.client.compact(store.revision())
    follower = Follower(store, VMS, start_revision=remembered + 1)
    collector = Collector(follower)
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.snapshots()) == 1)
    assert sorted(collector.state) == ["b"] and follower.relists == 1


def test_periodic_resync_lists_again(store: Store, collectors: list[Collector]) -> None:
    store.create(VMS, "a", a_vm("a"))
    collector = Collector(Follower(store, VMS, resync_interval=0.5))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.snapshots()) >= 3, timeout=5)
    store.create(VMS, "b", a_vm("b"))
    collector.wait_for(lambda: sorted(collector.state) == ["a", "b"])


def test_garbage_in_the_stream_is_skipped_with_a_log_line(
        store: Store, collectors: list[Collector], caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector(Follower(store, VMS))
    collectors.append(collector)
    collector.wait_for(lambda: len(collector.items) == 1)
    with caplog.at_level(logging.WARNING):
        store.client.put("/v1/vm/garbage", b"\x00\x01")
        store.create(VMS, "after", a_vm("after"))
        collector.wait_for(lambda: "after" in collector.state)
    assert [c.name for c in collector.changes()] == ["after"]
    assert "skipping invalid record /v1/vm/garbage" in caplog.text
