"""The scheduler's decisions, cell by cell, on hand-built views (no etcd, no clock, no threads)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime

from tests.scheduler.views import host, view_with, vm
from ucloud_common.config import Settings
from ucloud_common.host import HostStatus
from ucloud_common.states import MigrationPhase, Requested, Status
from ucloud_common.store import Snapshot, Versioned
from ucloud_common.vm import Migration, placed_on
from ucloud_scheduler.plan import FenceDone, FenceFailure, FenceStart, Fencing, Plan, plan_cycle
from ucloud_scheduler.view import View

SETTINGS = Settings(fence_retry=30.0, placement="spread")
OUTAGE = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
EARLIER = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
NOW = 1000.0


def plan(view: View, fencing: Mapping[str, Fencing] | None = None, now: float = NOW) -> Plan:
    return plan_cycle(view, fencing or {}, SETTINGS, now, random.Random(1))


def dead_host_view(*vms: object) -> View:
    """h1 DOWN since OUTAGE and not alive, holding `vms`; h2 alive and UP but in maintenance (so
    nothing released is placed in the same plan)."""
    return view_with(host("h1", status=HostStatus.DOWN, down_since=OUTAGE, storage_backends=("local", "rbd")),
                     host("h2", maintenance=True, storage_backends=("local", "rbd")), alive=("h2",),
                     vms=vms)  # type: ignore[arg-type]


def killed(uuid: str, **fields: object) -> object:
    return vm(uuid, storage="rbd", status=Status.KILLED, **placed_on("h1"), **fields)


def test_a_host_whose_lease_expired_is_declared_down_and_its_vms_killed() -> None:
    view = view_with(host("h1"), host("h2"), alive=("h2",),
                     vms=(vm("shared", storage="rbd", status=Status.RUNNING, **placed_on("h1")),
                          vm("local", status=Status.RUNNING, **placed_on("h1")),
                          vm("stopped", status=Status.STOPPED, **placed_on("h1"))))
    decided = plan(view)
    assert decided.sentence() == "hosts DOWN: h1; 2 VMs killed"
    assert decided.down == ("h1",)
    assert {w.seen.name: w.changes for w in decided.killed} == {
        "shared": {"status": Status.KILLED, "error": "host h1 died; restarting it elsewhere once the host is fenced"},
        "local": {"status": Status.KILLED,
                  "error": "host h1 died; its disk is local to that host: it restarts when the host returns"},
    }
    assert {w.message for w in decided.killed} == {"killed: host h1 died"}
    assert decided.fences == ()  # its outage starts when DOWN is written: the next plan fences it
    assert view.hosts["h1"].value.status is HostStatus.UP, "a plan changes nothing"


def test_a_vm_whose_killed_write_was_lost_is_killed_again_and_fenced() -> None:
    decided = plan(dead_host_view(vm("a", storage="rbd", status=Status.RUNNING, **placed_on("h1"))))
    assert decided.sentence() == "1 VMs killed; fencing host h1 for 1 VMs"
    assert [w.seen.name for w in decided.killed] == ["a"]
    assert decided.fences == (FenceStart(decided.fences[0].host, ("a",)),)
    assert decided.fences[0].host.down_since == OUTAGE


def test_a_fence_is_started_for_the_shared_vms_that_want_to_run() -> None:
    view = dead_host_view(killed("a"), killed("stopped", requested=Requested.STOPPED),
                          vm("local", status=Status.KILLED, **placed_on("h1")))
    decided = plan(view)
    assert decided.sentence() == "fencing host h1 for 1 VMs"
    assert [(f.host.name, f.uuids) for f in decided.fences] == [("h1", ("a",))]
    assert decided.released == ()


def test_a_running_fence_is_waited_for() -> None:
    decided = plan(dead_host_view(killed("a")), {"h1": Fencing(OUTAGE, running=True)})
    assert decided == Plan() and decided.sentence() == ""


def test_a_fence_done_for_this_outage_releases_what_it_fenced_and_fences_the_rest() -> None:
    view = dead_host_view(killed("a", error="host h1 died; restarting it elsewhere once the host is fenced"),
                          killed("late"))  # KILLED after the fence started: not fenced by it
    decided = plan(view, {"h1": Fencing(OUTAGE, result=frozenset({"a"}))})
    assert decided.sentence() == ("host h1 fenced (1 VMs); 1 VMs released to other hosts after fencing; "
                                  "fencing host h1 for 1 VMs")
    assert decided.fenced == (FenceDone("h1", OUTAGE, frozenset({"a"})),)
    [released] = decided.released  # stays KILLED: the next plan places it
    assert (released.seen.name, released.changes) == ("a", {**placed_on(""), "error": ""})
    assert released.message == "host h1 is fenced: to be placed elsewhere"
    assert [f.uuids for f in decided.fences] == [("late",)]


def test_what_was_fenced_earlier_in_this_outage_is_released() -> None:
    decided = plan(dead_host_view(killed("a")), {"h1": Fencing(OUTAGE, fenced=frozenset({"a"}))})
    assert decided.sentence() == "1 VMs released to other hosts after fencing"


def test_a_fence_of_an_earlier_outage_is_ignored() -> None:
    """The host came back and died again: what the old fence cut off says nothing about the VMs it
    ran since, even one with the same uuid."""
    for earlier in (Fencing(EARLIER, result=frozenset({"a"})), Fencing(EARLIER, fenced=frozenset({"a"})),
                    Fencing(EARLIER, running=True), Fencing(EARLIER, failed_at=NOW)):
        decided = plan(dead_host_view(killed("a")), {"h1": earlier})
        assert decided.sentence() == "fencing host h1 for 1 VMs", earlier
        assert decided.fenced == decided.released == ()


def test_a_failed_fence_is_told_to_the_vms_and_retried_after_fence_retry() -> None:
    view = dead_host_view(killed("a"), killed("stopped", requested=Requested.STOPPED))
    decided = plan(view, {"h1": Fencing(OUTAGE, error="fence command fence.sh exited 3: no power")})
    assert decided.sentence() == "fencing host h1 failed: fence command fence.sh exited 3: no power"
    assert decided.fence_failures == (FenceFailure("h1", OUTAGE, "fence command fence.sh exited 3: no power", NOW),)
    assert {w.seen.name: w.changes["error"] for w in decided.noted} == dict.fromkeys(
        ("a", "stopped"), "host h1 died and could not be fenced (fence command fence.sh exited 3: no power); "
                          "waits for the host or for fencing")
    assert decided.fences == ()
    failed = {"h1": Fencing(OUTAGE, failed_at=NOW)}
    assert plan(view, failed, now=NOW + SETTINGS.fence_retry - 1).fences == ()
    assert [f.uuids for f in plan(view, failed, now=NOW + SETTINGS.fence_retry).fences] == [("a",)]


def test_a_host_back_alive_has_its_fencing_forgotten_and_is_unfenced_once_no_fenced_vm_waits() -> None:
    back = host("h1", fenced=True, down_since=OUTAGE, storage_backends=("rbd",))
    waiting = view_with(back, vms=(killed("a"),))
    decided = plan(waiting, {"h1": Fencing(OUTAGE, fenced=frozenset({"a"}))})
    assert decided.sentence() == "host h1 is back: its fencing forgotten"
    assert decided.forgotten == ("h1",) and decided.unfenced == () and decided.released == ()
    restarted = view_with(back, vms=(vm("a", storage="rbd", status=Status.STARTING, **placed_on("h1")),))
    assert plan(restarted).sentence() == "host h1 no longer fenced"


def test_placement_and_refusal_with_the_reason() -> None:
    view = view_with(host("h1", ram=8), host("h2", ram=4, maintenance=True),
                     vms=(vm("small", ram=2), vm("big", ram=64),
                          vm("told", ram=64, error="no host has 64 GiB RAM free; the most free is 6 GiB RAM on h1")))
    decided = plan(view)
    assert decided.sentence() == "1 VMs placed; 2 VMs unplaceable"
    [placed] = decided.placed
    assert (placed.seen.name, placed.changes, placed.message) == \
        ("small", {"status": Status.SCHEDULED_DEPLOY, "hostname": "/v1/host/h1", "error": ""}, "placed on h1")
    reason = "no host has 64 GiB RAM free; the most free is 6 GiB RAM on h1"  # after "small" took 2
    assert [(w.seen.name, w.changes, w.message) for w in decided.refused] == [
        ("big", {"error": reason}, f"unschedulable: {reason}"), ("told", {"error": reason}, f"unschedulable: {reason}")]
    assert [w.changes_anything for w in decided.refused] == [True, False]  # already told: apply writes nothing
    assert list(view.pending) == ["small", "big", "told"], "a plan changes nothing"


def moving(uuid: str, to: str = "*", **fields: object) -> object:
    return vm(uuid, **{"storage": "rbd", "status": Status.RUNNING, "migrate_to": to if to == "*" else f"/v1/host/{to}",
                       "migrate_generation": 2, "generation": 2, **placed_on("h1"), **fields})


def test_a_migration_gets_a_target_as_placement_would_never_its_own_host() -> None:
    rbd = ("local", "rbd")
    view = view_with(host("h1", storage_backends=rbd), host("h2", storage_backends=rbd),
                     host("h3", storage_backends=("local",)), vms=(moving("v1"),))  # type: ignore[arg-type]
    [move] = plan(view).moves
    assert move.changes["migration"].target == "h2" and move.changes["migration"].source == "h1"
    assert move.changes["migration"].request == 2
    # The room it takes on the target is held there from now on.
    view.set_vm(Versioned("v1", move.seen.value.evolve(**move.changes), 2, 1))
    assert view.allocated["h2"].cpu == 1 and not plan(view).moves


def test_a_migration_no_host_can_take_ends_with_the_reason() -> None:
    view = view_with(host("h1", storage_backends=("rbd",)), host("h2", storage_backends=("local",)),
                     vms=(moving("v1"), moving("v2", to="h2")))  # type: ignore[arg-type]
    refusals = {w.seen.name: w for w in plan(view).unmovable}
    assert "no UP host offers storage rbd" in refusals["v1"].message
    assert "host h2 cannot take it" in refusals["v2"].message
    assert all(w.changes["migrated_generation"] == 2 for w in refusals.values())


def test_migrations_leaving_one_host_wait_their_turn() -> None:
    rbd = ("rbd",)
    view = view_with(host("h1", cpu=64, ram=64, storage_backends=rbd), host("h2", cpu=64, ram=64, storage_backends=rbd),
                     vms=tuple(moving(f"v{n}") for n in range(5)))  # type: ignore[arg-type]
    assert len(plan(view).moves) == SETTINGS.migrations_per_host


def test_a_host_that_dies_mid_migration_ends_it_and_the_fence_covers_the_target_too() -> None:
    migration = Migration(source="h1", target="h2", phase=MigrationPhase.RUNNING, request=2,
                          target_clients=("192.0.2.2:0/2",))
    view = view_with(host("h1"), host("h2"), alive=("h2",),
                     vms=(moving("v1", status=Status.MIGRATING, migration=migration,  # type: ignore[arg-type]
                                 disk_clients=("192.0.2.1:0/1",)),))
    [kill] = plan(view).killed
    assert kill.changes["migration"] is None and kill.changes["status"] is Status.KILLED
    assert kill.changes["disk_clients"] == ("192.0.2.1:0/1", "192.0.2.2:0/2")


def test_a_draining_host_is_emptied_in_turns_and_says_what_cannot_leave() -> None:
    rbd = ("local", "rbd")
    on_h1 = {"status": Status.RUNNING, "storage": "rbd", **placed_on("h1")}
    view = view_with(host("h1", maintenance=True, drain=True, storage_backends=rbd),
                     host("h2", cpu=64, ram=64, storage_backends=rbd),
                     vms=(vm("a", **on_h1), vm("b", **on_h1), vm("c", **on_h1),  # type: ignore[arg-type]
                          vm("d", **{**on_h1, "status": Status.STOPPED}),
                          vm("e", **{**on_h1, "storage": "local"}),
                          vm("f", **{**on_h1, "status": Status.STARTING})))
    decided = plan(view)
    live = sorted(w.seen.name for w in decided.moves if "migration" in w.changes)
    assert live == ["a", "b"]  # two at a time (migrations_per_host); c waits its turn
    [cold] = [w for w in decided.moves if "hostname" in w.changes]
    assert cold.seen.name == "d" and cold.changes["hostname"] == "/v1/host/h2"  # stopped: placed elsewhere
    [(name, blocked)] = decided.blocked
    assert name == "h1" and dict(blocked) == {"e": "its disk is on local storage, which only this host reaches"}


def test_a_resize_is_written_where_its_host_has_room_and_refused_with_the_reason_where_not() -> None:
    from ucloud_common.specs import Specs

    def stopped(uuid: str, on: str, resize: dict[str, float], **fields: object) -> object:
        return vm(uuid, cpu=1, ram=1, ssd=10, status=Status.STOPPED, requested=Requested.STOPPED, **placed_on(on),
                  resize={"cpu": 1, "ram": 1, "ssd": 10, **resize}, **fields)

    view = view_with(host("h1", cpu=1, ram=8, ssd=60), host("h2", cpu=1, ram=4, ssd=100, hdd=50, hdd_backends=("local",)),
                     host("h3", maintenance=True),
                     vms=(stopped("grows", "h1", {"ram": 3, "ssd": 20}),  # 2 GiB RAM and 10 GiB SSD more: fits
                          stopped("too-big", "h1", {"ssd": 40}),  # 30 GiB SSD free on h1, 20 after `grows`
                          stopped("no-hdd-here", "h1", {"hdd": 5}),
                          stopped("hdd", "h2", {"hdd": 50, "cpu": 3}),  # 4 vCPUs (over-committed 4×), 2 free
                          stopped("shrinks-ram", "h2", {"ram": 0.5}),
                          stopped("in-maintenance", "h3", {"cpu": 2})))
    decided = plan(view)
    assert decided.sentence() == "3 VMs resized; 3 VMs not resized"
    assert {w.seen.name: w.changes for w in decided.resized} == {
        "grows": {"specs": Specs(cpu=1, ram=3, ssd=20), "resize": None, "error": ""},
        "hdd": {"specs": Specs(cpu=3, ram=1, ssd=10, hdd=50), "resize": None, "error": ""},
        "shrinks-ram": {"specs": Specs(cpu=1, ram=0.5, ssd=10), "resize": None, "error": ""},
    }
    assert {w.seen.name: w.changes["error"] for w in decided.not_resized} == {
        "too-big": "resize refused: its host h1 has 20 GiB SSD free, the resize needs 30 GiB SSD more",
        "no-hdd-here": "resize refused: its host h1 makes no HDD disks on storage local",
        "in-maintenance": "resize refused: its host h3 is not UP, not alive or in maintenance; ask again once it is",
    }
    assert all(w.changes["resize"] is None for w in decided.not_resized)
    # A later resize that fits clears an earlier refusal, never another error.
    again = view_with(host("h1"), vms=(stopped("refused-before", "h1", {"cpu": 2}, error="resize refused: no room"),
                                       stopped("crashed", "h1", {"cpu": 2}, error="disk: full")))
    assert {w.seen.name: w.changes["error"] for w in plan(again).resized} == {"refused-before": "", "crashed": "disk: full"}
    assert {w.message for w in decided.resized} >= {"resized to 1 CPUs, 3 GiB RAM, 20 GiB SSD, 0 GiB HDD"}
    # The room the resizes took is gone for a new VM in the same plan: h1 has 30 GiB SSD free without
    # `grows`' resize and 20 with it, h2 no CPU left after `hdd`'s.
    view.apply_vms(Snapshot({**view.vms, "new": Versioned("new", vm("new", cpu=1, ram=1, ssd=25), 2, 2)}, 2))
    assert plan(view).placed == ()
    view.apply_vms(Snapshot({**view.vms, "new": Versioned("new", vm("new", cpu=1, ram=1, ssd=20), 2, 2)}, 2))
    assert [w.changes["hostname"] for w in plan(view).placed] == ["/v1/host/h1"]
