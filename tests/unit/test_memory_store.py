"""What MemoryStore adds for scenario tests: simulated lease expiry, compaction, unavailability.
(The contract itself is tested on MemoryStore and etcd alike in tests/integration/test_store.py,
test_follow.py and test_lease_and_election.py.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from tests.helpers.collector import Collector
from ucloud_common import clock
from ucloud_common.clock import SimClock
from ucloud_common.host import HOSTS_ALIVE, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.store import Compacted, Follower, MemoryStore, StoreUnavailable
from ucloud_common.vm import VM, VMS


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


@pytest.fixture
def sim() -> Iterator[SimClock]:
    with clock.simulated(SimClock()) as simulated:
        assert isinstance(simulated, SimClock)
        yield simulated


def test_an_unrefreshed_lease_expires_on_the_simulated_clock_with_delete_events(sim: SimClock) -> None:
    store = MemoryStore()
    kept, lost = store.grant_lease(10), store.grant_lease(10)
    for name, lease in (("kept", kept), ("lost-b", lost), ("lost-a", lost)):
        store.create(HOSTS_ALIVE, name, HostAlive(agent_id=name), lease=lease)
    watch = store.watch(HOSTS_ALIVE.prefix.encode(), b"/v1/host-alive0", store.revision() + 1)
    sim.advance(6)
    assert store.refresh_lease(kept) == 10
    sim.advance(3.9)
    assert watch.next(0) is None, "nothing expired yet, and next(0) never waits"
    sim.advance(0.1)
    events = watch.next(0)
    assert events is not None
    # one revision for the whole lease, its keys in key order, as etcd's lessor deletes them
    assert [(e.key, e.value) for e in events] == [(b"/v1/host-alive/lost-a", None), (b"/v1/host-alive/lost-b", None)]
    assert len({e.mod_revision for e in events}) == 1 and events[0].mod_revision == store.revision()
    assert sorted(store.list(HOSTS_ALIVE).items) == ["kept"]
    assert store.refresh_lease(lost) == 0, "etcd answers a keep-alive of an expired lease with TTL 0"
    sim.advance(6)
    assert store.get(HOSTS_ALIVE, "kept") is None
    watch.cancel()


def test_a_watch_from_a_compacted_revision_raises_and_an_open_one_is_unaffected() -> None:
    store = MemoryStore()
    store.create(VMS, "a", a_vm("a"))
    open_watch = store.watch(b"/v1/vm/a", None, store.revision() + 1)
    before = store.revision()
    store.update(VMS, "a", lambda vm: vm.evolve(restarts=1))
    store.compact(store.revision())
    with pytest.raises(Compacted) as raised:
        store.watch(b"/v1/vm/a", None, before)
    assert raised.value.compacted_revision == store.revision()
    store.watch(b"/v1/vm/a", None, store.revision()).cancel()  # the compaction revision itself is kept
    events = open_watch.next(0)
    assert events is not None and [e.mod_revision for e in events] == [store.revision()]
    with pytest.raises(Compacted):
        store.compact(before)
    with pytest.raises(ValueError, match="future revision"):
        store.compact(store.revision() + 1)


def test_an_unavailable_connection_fails_every_call_and_applies_nothing() -> None:
    store = MemoryStore()
    other = store.connect()
    store.create(VMS, "a", a_vm("a"))
    watch = store.watch(b"/v1/vm/", b"/v1/vm0", store.revision() + 1)
    store.unavailable = True
    for call in (lambda: store.get(VMS, "a"), lambda: store.create(VMS, "b", a_vm("b")), store.revision,
                 lambda: store.grant_lease(5), lambda: watch.next(0)):
        with pytest.raises(StoreUnavailable, match="unavailable"):
            call()
    assert other.get(VMS, "b") is None, "a write refused for unavailability was not applied"
    other.create(VMS, "c", a_vm("c"))  # another process's connection still works
    store.unavailable = False
    with pytest.raises(StoreUnavailable):  # a broken watch stays broken: watch again
        watch.next(0)
    assert sorted(store.list(VMS).items) == ["a", "c"]


def test_a_follower_cut_off_past_a_compaction_relists_and_sees_the_final_state(
        caplog: pytest.LogCaptureFixture) -> None:
    """The story of test_follow's proxy test: the follower's connection is cut, the family changes
    and is compacted meanwhile; back, it cannot resume, lists again and converges."""
    store = MemoryStore()
    for name in ("keep", "change", "drop"):
        store.create(VMS, name, a_vm(name))
    watching = store.connect()
    follower = Follower(watching, VMS)
    collector = Collector(follower)
    try:
        collector.wait_for(lambda: sorted(collector.state) == ["change", "drop", "keep"])
        watching.unavailable = True
        store.update(VMS, "change", lambda vm: vm.evolve(restarts=7))
        store.delete(VMS, "drop")
        store.create(VMS, "new", a_vm("new"))
        store.compact(store.revision())
        collector.wait_for(lambda: follower.failures >= 1)
        with caplog.at_level(logging.INFO, logger="ucloud_common.store.follow"):
            watching.unavailable = False
            collector.wait_for(lambda: sorted(collector.state) == ["change", "keep", "new"], timeout=10)
        assert collector.state["change"].value.restarts == 7
        assert follower.relists == 1 and len(collector.snapshots()) == 2
        assert "was compacted" in caplog.text
    finally:
        collector.stop()


def test_a_waiting_watch_wakes_at_a_write_and_answers_progress_when_idle() -> None:
    store = MemoryStore()
    watch = store.watch(b"/v1/vm/", b"/v1/vm0", store.revision() + 1, idle=0.2)
    started = time.monotonic()
    assert watch.next(0.05) is None
    assert watch.next(1.0) == [] and time.monotonic() - started < 0.5, "a progress answer after idle"
    store.create(VMS, "a", a_vm("a"))
    events = watch.next(1.0)
    assert events is not None and [e.key for e in events] == [b"/v1/vm/a"]
    watch.cancel()
    watch.cancel()
    with pytest.raises(StoreUnavailable):
        watch.next(0)
    later = store.watch(b"/v1/vm/a", None, store.revision() + 2)
    store.update(VMS, "a", lambda vm: vm.evolve(restarts=1))
    assert later.next(0) is None, "a watch from a future revision sees nothing before it"
    store.update(VMS, "a", lambda vm: vm.evolve(restarts=2))
    events = later.next(0)
    assert events is not None and [e.mod_revision for e in events] == [store.revision()]
