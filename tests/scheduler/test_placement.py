"""Placement decisions on an in-memory view (no etcd): filters, weighers, and the reasons given."""

from __future__ import annotations

import random

from tests.scheduler.views import host, view_with, vm
from ucloud_common.host import HostStatus
from ucloud_common.states import Status
from ucloud_common.store import Change, Snapshot, Versioned
from ucloud_common.vm import placed_on
from ucloud_scheduler.placement import Placer, Ratios
from ucloud_scheduler.view import View


def test_capacity_with_over_commit() -> None:
    view = view_with(host("h1", cpu=2, ram=8, ssd=100))
    placer = Placer(view, Ratios(cpu=4.0, ram=1.0, disk=1.0))
    placed = [placer.place(vm(f"v{i}", cpu=1, ram=1, ssd=10)) for i in range(10)]
    # cpu: 2 × 4.0 = 8 vCPUs; ram 8 GiB; ssd 100 GiB: the eighth VM is the last that fits.
    assert placed == ["h1"] * 8 + [None, None]
    assert placer.why_not(vm("big", cpu=1, ram=1, ssd=10)) == "no host has 1 CPUs free; the most free is 0 CPUs on h1"


def test_a_placed_vm_holds_its_host_in_the_view() -> None:
    view = view_with(host("h1", cpu=1, ram=2), vms=(vm("old", ram=2, **placed_on("h1"), status=Status.STOPPED),))
    assert view.allocated["h1"].ram == 2
    placer = Placer(view, Ratios())
    assert placer.place(vm("new", ram=1)) is None
    assert placer.why_not(vm("new", ram=1)) == "no host has 1 GiB RAM free; the most free is 0 GiB RAM on h1"
    view.apply_vms(Change("old", None, 5))
    assert Placer(view, Ratios()).place(vm("new", ram=1)) == "h1"


def test_the_seed_sentence_for_too_much_ram() -> None:
    view = view_with(host("h1", ram=8), host("h3", ram=12), host("h2", ram=4))
    placer = Placer(view, Ratios())
    assert placer.place(vm("v", ram=64)) is None
    assert placer.why_not(vm("v", ram=64)) == "no host has 64 GiB RAM free; the most free is 12 GiB RAM on h3"


def test_only_up_alive_hosts_out_of_maintenance() -> None:
    view = view_with(host("down", status=HostStatus.DOWN), host("dead"), host("maint", maintenance=True),
                     host("ok"), alive=("down", "maint", "ok"))
    placer = Placer(view, Ratios())
    assert {placer.place(vm(f"v{i}")) for i in range(10)} == {"ok"}
    empty = view_with(host("dead"), alive=())
    assert Placer(empty, Ratios()).why_not(vm("v")) == "no host is UP and out of maintenance (1 hosts, 1 not alive)"
    assert Placer(View(), Ratios()).why_not(vm("v")) == "no host is registered"


def test_storage_backend() -> None:
    view = view_with(host("local-only"), host("ceph", storage_backends=("local", "rbd")))
    placer = Placer(view, Ratios())
    assert {placer.place(vm(f"v{i}", storage="rbd")) for i in range(5)} == {"ceph"}
    only_local = Placer(view_with(host("local-only")), Ratios())
    assert only_local.place(vm("v", storage="rbd")) is None
    assert only_local.why_not(vm("v", storage="rbd")) == "no UP host offers storage rbd"


def test_anti_affinity_within_a_batch_and_against_placed_vms() -> None:
    hosts = [host(f"h{i}") for i in range(3)]
    view = view_with(*hosts, vms=(vm("placed", anti_affinity="db", **placed_on("h0"), status=Status.RUNNING),))
    placer = Placer(view, Ratios())
    chosen = [placer.place(vm(f"db{i}", anti_affinity="db")) for i in range(3)]
    assert sorted(c for c in chosen if c) == ["h1", "h2"] and chosen[2] is None
    assert placer.why_not(vm("db9", anti_affinity="db")) == "every UP host already runs a VM of anti-affinity group db"
    other_owner = vm("x", anti_affinity="db", owner="bob")
    assert placer.place(other_owner) is not None  # groups are per owner


def test_spread_takes_the_least_loaded_and_pack_the_most_loaded() -> None:
    hosts = (host("big", cpu=16, ram=64, ssd=1000), host("small", cpu=4, ram=16, ssd=1000))
    busy = vm("busy", cpu=2, ram=12, **placed_on("small"), status=Status.RUNNING)
    view = view_with(*hosts, vms=(busy,))
    assert Placer(view, Ratios(), "spread").place(vm("v", ram=1)) == "big"
    assert Placer(view, Ratios(), "pack").place(vm("v", ram=1)) == "small"


def test_spread_evens_out_and_ties_break_at_random() -> None:
    view = view_with(*(host(f"h{i}") for i in range(4)))
    placer = Placer(view, Ratios(), "spread", random.Random(1))
    chosen = [placer.place(vm(f"v{i}")) for i in range(8)]
    assert sorted(chosen) == ["h0", "h0", "h1", "h1", "h2", "h2", "h3", "h3"]  # type: ignore[type-var]
    firsts = {Placer(view, Ratios(), "spread", random.Random(seed)).place(vm("v")) for seed in range(20)}
    assert len(firsts) > 1


def test_no_single_host_has_everything() -> None:
    view = view_with(host("cpu-rich", cpu=16, ram=2), host("ram-rich", cpu=1, ram=64))
    placer = Placer(view, Ratios(cpu=1.0))
    assert placer.place(vm("v", cpu=8, ram=32)) is None
    assert placer.why_not(vm("v", cpu=8, ram=32)) == \
        "no host has 8 CPUs, 32 GiB RAM, 10 GiB SSD and 0 GiB HDD free at once"


def test_the_view_tracks_pending_vms() -> None:
    view = view_with(host("h1"))
    view.apply_vms(Change("a", Versioned("a", vm("a"), 2, 2), 2))
    view.apply_vms(Change("b", Versioned("b", vm("b", requested="STOPPED", status=Status.KILLED), 3, 3), 3))
    view.apply_vms(Change("c", Versioned("c", vm("c", status=Status.KILLED), 4, 4), 4))
    assert list(view.pending) == ["a", "c"]
    view.apply_vms(Change("a", Versioned("a", vm("a", **placed_on("h1"), status=Status.SCHEDULED_DEPLOY), 5, 2), 5))
    assert list(view.pending) == ["c"] and view.allocated["h1"].cpu == 1
    view.apply_vms(Change("a", Versioned("a", vm("a"), 4, 2), 4))  # an older event changes nothing
    assert list(view.pending) == ["c"]


def test_a_host_is_known_dead_only_once_liveness_was_seen_past_its_record() -> None:
    record = Versioned("h1", host("h1"), 150, 150)
    view = View()
    view.apply_hosts(Snapshot({"h1": record}, 150))
    view.apply_alive(Snapshot({}, 140))  # the liveness stream lags: the agent's key (149) not seen yet
    assert not view.known_dead(record)
    view.apply_alive(Change("h1", Versioned("h1", object(), 149, 149), 149))  # type: ignore[arg-type]
    assert not view.known_dead(record)
    view.apply_alive(Change("h1", None, 200))  # the lease expired
    assert view.known_dead(record)


def test_a_vm_with_an_hdd_disk_goes_only_where_its_backend_makes_hdd_disks_with_room() -> None:
    view = view_with(host("no-hdd"), host("small", hdd=5, hdd_backends=("local",)),
                     host("rbd-hdd", hdd=500, storage_backends=("local", "rbd"), hdd_backends=("rbd",)),
                     host("big", hdd=100, hdd_backends=("local",)))
    placer = Placer(view, Ratios())
    assert [placer.place(vm(f"v{i}", hdd=40)) for i in range(3)] == ["big", "big", None]
    assert placer.why_not(vm("v", hdd=40)) == "no host has 40 GiB HDD free; the most free is 20 GiB HDD on big"
    assert placer.place(vm("small-one", hdd=5)) == "small"
    assert placer.place(vm("r", storage="rbd", hdd=400)) == "rbd-hdd"
    assert {placer.place(vm(f"plain{i}")) for i in range(20)} >= {"no-hdd"}  # no hdd asked: any host
    only_plain = Placer(view_with(host("no-hdd"), host("rbd-only", storage_backends=("local", "rbd"))), Ratios())
    assert only_plain.place(vm("v", hdd=1)) is None
    assert only_plain.why_not(vm("v", hdd=1)) == "no UP host offers HDD disks on storage local (it asks for 1 GiB HDD)"


def test_a_local_disk_vm_goes_where_its_image_is_or_can_be_fetched() -> None:
    # h1 holds the image and serves it; h2 can fetch (it serves too); h3 serves nothing, so it could not fetch.
    view = view_with(host("h1", cpu=1, images=("tiny",), image_url="http://h1:9473"),
                     host("h2", images=(), image_url="http://h2:9473"), host("h3", cpu=64, images=()))
    placer = Placer(view, Ratios(cpu=1.0))
    assert [placer.place(vm(f"v{i}")) for i in range(6)] == ["h1", "h2", "h2", "h2", "h2", None]
    assert placer.why_not(vm("v")).kind == "no_room_cpu"
    # Shared storage needs no copy on the host: h3 offers rbd and takes it.
    rbd = view_with(host("h3", images=(), storage_backends=("local", "rbd")))
    assert Placer(rbd, Ratios()).place(vm("r", storage="rbd")) == "h3"


def test_a_local_disk_vm_waits_with_the_reason_while_no_live_host_serves_its_image() -> None:
    served = {"images": ("tiny",), "image_url": "http://h1:9473"}
    lonely = view_with(host("h1", **served), host("h2", images=(), image_url="http://h2:9473"), alive=("h2",))
    placer = Placer(lonely, Ratios())
    assert placer.place(vm("v")) is None
    refusal = placer.why_not(vm("v"))
    assert refusal.kind == "image"
    assert refusal == ("image tiny is only on h1, which cannot take the VM, and no UP host can fetch it from a live "
                       "one (hosts exchange images only with UCLOUD_IMAGE_SECRET set, both alive)")
    nowhere = Placer(view_with(host("h2", images=("other",))), Ratios())
    assert nowhere.why_not(vm("v")).startswith("no host holds image tiny in its local store")
    # An agent that does not list its images (older than the list) is taken as holding every image.
    assert Placer(view_with(host("old")), Ratios()).place(vm("v")) == "old"
