"""The scheduler against a real etcd, with hosts simulated by their records and leases."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers.cluster import create_vm, register_host, vm, wait_for
from tests.helpers.inline import InlineExecutor
from tests.scheduler.conftest import FENCE
from ucloud_common import clock
from ucloud_common.allocation import allocations
from ucloud_common.clock import SimClock
from ucloud_common.config import Settings
from ucloud_common.event import Kind, object_events, ref
from ucloud_common.logs import DATE_FORMAT, FORMAT, PrintableFormatter
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive, HostStatus
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Snapshot, Store
from ucloud_common.vm import VMS
from ucloud_scheduler.fencing import CommandFence
from ucloud_scheduler.scheduler import Scheduler


def placed(store: Store, uuid: str) -> bool:
    return vm(store, uuid).status is Status.SCHEDULED_DEPLOY


def test_places_new_vms_within_capacity_and_tells_the_event_log(
        store: Store, start_scheduler: Callable[..., Scheduler]) -> None:
    leases = [register_host(store, "h1", cpu=2, ram=4, ssd=100), register_host(store, "h2", cpu=2, ram=4, ssd=100)]
    start_scheduler()
    uuids = [create_vm(store, ram=1) for _ in range(10)]
    wait_for(lambda: sum(placed(store, u) for u in uuids) == 8, 10, "8 placements")
    refused = [u for u in uuids if not placed(store, u)]
    assert len(refused) == 2
    for u in refused:
        assert vm(store, u).error == "no host has 1 GiB RAM free; the most free is 0 GiB RAM on h1" or \
            vm(store, u).error == "no host has 1 GiB RAM free; the most free is 0 GiB RAM on h2"
    totals = allocations(v.value for v in store.list(VMS).items.values())
    assert totals["h1"].ram == totals["h2"].ram == 4  # spread evenly, none overfilled
    events = object_events(store, ref(Kind.VM, uuids[0]))
    assert any(e.message.startswith("placed on h") for e in events)
    for lease in leases:
        lease.close()


def test_an_unschedulable_vm_says_why_and_is_placed_once_capacity_appears(
        store: Store, start_scheduler: Callable[..., Scheduler]) -> None:
    small = register_host(store, "h1", ram=8)
    start_scheduler()
    big = create_vm(store, ram=64)
    wait_for(lambda: vm(store, big).error, 10, "a reason")
    assert vm(store, big).error == "no host has 64 GiB RAM free; the most free is 8 GiB RAM on h1"
    assert vm(store, big).status is Status.REQUESTED_NEW
    large = register_host(store, "h2", ram=128)
    wait_for(lambda: placed(store, big), 10, "placement on the new host")
    assert vm(store, big).host == "h2" and vm(store, big).hostname == "/v1/host/h2" and vm(store, big).error == ""
    small.close()
    large.close()


def test_maintenance_and_stopped_vms(store: Store, start_scheduler: Callable[..., Scheduler]) -> None:
    lease = register_host(store, "h1")
    store.update(HOSTS, "h1", lambda h: h.evolve(maintenance=True))
    start_scheduler()
    waiting = create_vm(store)
    not_wanted = create_vm(store, requested="STOPPED", status="KILLED")
    wait_for(lambda: vm(store, waiting).error, 10)
    assert "maintenance" in vm(store, waiting).error
    store.update(HOSTS, "h1", lambda h: h.evolve(maintenance=False))
    wait_for(lambda: placed(store, waiting), 10)
    assert vm(store, not_wanted).status is Status.KILLED and not vm(store, not_wanted).host
    lease.close()


def test_a_dead_hosts_vms_are_killed_fenced_and_rescheduled(
        store: Store, start_scheduler: Callable[..., Scheduler], fence_log: Path) -> None:
    dying = register_host(store, "h1", storage=("local", "rbd"), ttl=2)
    start_scheduler()
    shared = [create_vm(store, storage="rbd") for _ in range(3)]
    local = create_vm(store)
    wait_for(lambda: all(placed(store, u) for u in [*shared, local]), 10, "placement on h1")
    for u in [*shared, local]:
        store.update(VMS, u, lambda v: v.evolve(status=Status.RUNNING))  # what the agent reports
    other = register_host(store, "h2", storage=("local", "rbd"))
    dying.close(revoke=False)  # the agent dies: its lease runs out
    took = wait_for(lambda: all(vm(store, u).host == "h2" for u in shared), 2 + 8, "rescheduling")
    fenced_at = float(fence_log.read_text().split()[-1])
    assert fence_log.read_text().startswith("h1 ")
    for u in shared:
        v = vm(store, u)
        assert v.status is Status.SCHEDULED_DEPLOY and v.error == ""
        events = object_events(store, ref(Kind.VM, u))
        killed = [e for e in events if e.message == "killed: host h1 died"]
        released = [e for e in events if e.message == "host h1 is fenced: to be placed elsewhere"]
        assert killed and released and released[0].created_at.timestamp() >= fenced_at, "rescheduled before the fence"
    host = store.get(HOSTS, "h1")
    assert host is not None and host.value.status is HostStatus.DOWN and host.value.fenced
    kept = vm(store, local)
    assert kept.status is Status.KILLED and kept.host == "h1"
    assert "disk is local" in kept.error
    print(f"rescheduled {took:.1f} s after the agent stopped renewing (TTL 2 s)")

    back = register_host(store, "h1", storage=("local", "rbd"))  # the host returns: its agent restarts it
    wait_for(lambda: not store.get(HOSTS, "h1").value.fenced, 10, "the returned host unfenced")  # type: ignore[union-attr]
    assert vm(store, local).host == "h1" and vm(store, local).status is Status.KILLED
    for lease in (other, back):
        lease.close()


def test_each_outage_of_a_host_is_fenced_anew(store: Store, start_scheduler: Callable[..., Scheduler],
                                               fence_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that returns while its fence runs, then dies again: the second outage gets its own
    fence before its VM is released (a fence of the first outage said nothing about the VMs the host
    ran since)."""
    monkeypatch.setenv("FENCE_SLEEP", "3")
    dying = register_host(store, "h1", storage=("rbd",), ttl=2)
    other = register_host(store, "h2", storage=("rbd",))
    store.update(HOSTS, "h2", lambda h: h.evolve(maintenance=True))
    start_scheduler()
    first = create_vm(store, storage="rbd", name="first")
    wait_for(lambda: placed(store, first), 10, "placement on h1")
    store.update(VMS, first, lambda v: v.evolve(status=Status.RUNNING))
    dying.close(revoke=False)
    wait_for(lambda: store.get(HOSTS, "h1").value.status is HostStatus.DOWN, 10, "h1 DOWN")  # type: ignore[union-attr]
    back = register_host(store, "h1", storage=("rbd",), ttl=2)  # back while the fence still runs
    wait_for(lambda: fence_log.exists(), 10, "the first fence done")
    second = create_vm(store, storage="rbd", name="second")
    wait_for(lambda: placed(store, second), 10, "placement on h1")
    store.update(VMS, second, lambda v: v.evolve(status=Status.RUNNING))
    store.update(HOSTS, "h2", lambda h: h.evolve(maintenance=False))
    back.close(revoke=False)
    wait_for(lambda: vm(store, second).host == "h2", 30, "the second VM moved")
    fences = fence_log.read_text().splitlines()
    assert len(fences) == 2, fences
    released = [e for e in object_events(store, ref(Kind.VM, second))
                if e.message == "host h1 is fenced: to be placed elsewhere"]
    assert released and released[0].created_at.timestamp() >= float(fences[1].split()[-1])
    other.close()


def test_without_a_fence_shared_vms_wait(store: Store, start_scheduler: Callable[..., Scheduler],
                                        fence_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FENCE_EXIT", "3")
    dying = register_host(store, "h1", storage=("rbd",), ttl=2)
    other = register_host(store, "h2", storage=("rbd",))
    store.update(HOSTS, "h2", lambda h: h.evolve(maintenance=True))
    start_scheduler()
    u = create_vm(store, storage="rbd")
    wait_for(lambda: placed(store, u), 10)
    store.update(HOSTS, "h2", lambda h: h.evolve(maintenance=False))
    dying.close(revoke=False)
    wait_for(lambda: "could not be fenced" in vm(store, u).error, 12, "the fence failure")
    assert vm(store, u).host == "h1" and vm(store, u).status is Status.KILLED
    assert "exited 3" in vm(store, u).error
    other.close()


def test_corrupt_records_are_skipped_with_a_log_line(
        store: Store, start_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture) -> None:
    lease = register_host(store, "h1")
    store.client.put("/v1/host/broken", b"{]")
    store.client.put("/v1/vm/broken", b'{"uuid": 1}')
    with caplog.at_level(logging.WARNING):
        start_scheduler()
        u = create_vm(store)
        wait_for(lambda: placed(store, u), 10)
    assert "skipping invalid record /v1/host/broken" in caplog.text
    assert "skipping invalid record /v1/vm/broken" in caplog.text
    lease.close()


def test_a_standby_does_not_place(store: Store, start_scheduler: Callable[..., Scheduler]) -> None:
    lease = register_host(store, "h1")
    first = start_scheduler()
    wait_for(lambda: first.election.is_leader, 10)
    second = start_scheduler()
    u = create_vm(store)
    wait_for(lambda: placed(store, u), 10)
    assert not second.election.is_leader
    assert [e.source for e in object_events(store, ref(Kind.VM, u))] == \
        [f"scheduler {first.candidate}"]
    lease.close()


def test_a_scheduler_driven_single_threaded_in_simulated_time(store: Store, settings: Settings,
                                                                fence_log: Path) -> None:
    """What a scenario simulation does: no follower, election or fence thread of the scheduler's own;
    it feeds the view, wins the election once, runs fences inline and calls run_cycle() itself."""
    scheduler = Scheduler(store, settings, CommandFence(str(FENCE), 10), "sim", fence_pool=InlineExecutor())
    assert scheduler.election.campaign(threading.Event())  # the key is vacant: won at once
    for name in ("h1", "h2"):
        store.create(HOSTS, name, Host(name=name, capacity=Specs(cpu=4, ram=8, ssd=100), storage_backends=("rbd",),
                                       maintenance=name == "h2"))
        store.create(HOSTS_ALIVE, name, HostAlive(agent_id=name))  # no lease: the test decides when it dies

    def cycle() -> str:
        for family, feed in ((HOSTS, scheduler.view.apply_hosts), (HOSTS_ALIVE, scheduler.view.apply_alive),
                             (VMS, scheduler.view.apply_vms)):
            listing = store.list(family)  # type: ignore[attr-defined]
            feed(Snapshot(listing.items, listing.revision))  # type: ignore[operator]
        return scheduler.run_cycle()

    with clock.simulated(SimClock()) as sim:
        u = create_vm(store, storage="rbd")
        assert cycle() == "1 VMs placed"
        store.update(VMS, u, lambda v: v.evolve(status=Status.RUNNING))
        store.update(HOSTS, "h2", lambda h: h.evolve(maintenance=False))
        store.delete(HOSTS_ALIVE, "h1")
        sim.advance(60)
        died = datetime.fromtimestamp(sim.time(), UTC)
        assert cycle() == "hosts DOWN: h1; 1 VMs killed"
        assert cycle() == "fencing host h1 for 1 VMs"  # run inline: done when run_cycle returns
        assert fence_log.read_text().startswith("h1 ")
        assert cycle() == "host h1 fenced (1 VMs); 1 VMs released to other hosts after fencing"
        assert cycle() == "1 VMs placed"
        assert cycle() == ""
    assert vm(store, u).host == "h2"
    h1 = store.get(HOSTS, "h1")
    assert h1 is not None and h1.value.fenced and h1.value.down_since == died  # the simulated time
    scheduler.election.resign()


def test_the_scheduler_logs_and_tells_the_request_id_of_the_vm(
        store: Store, start_scheduler: Callable[..., Scheduler]) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(PrintableFormatter(FORMAT, DATE_FORMAT))
    logger = logging.getLogger("ucloud_scheduler.scheduler")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        lease = register_host(store, "h1")
        start_scheduler()
        u = create_vm(store, request_id="r-from-the-api")
        wait_for(lambda: placed(store, u), 10, "a placement")
        assert [e.request_id for e in object_events(store, ref(Kind.VM, u))] == ["r-from-the-api"]
        wait_for(lambda: f"vm={u} placed on h1 request=r-from-the-api" in lines.getvalue(), 5, "the log line")
        lease.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
