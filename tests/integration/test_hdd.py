"""HDD disks end to end on a real etcd, with the real scheduler and agent (the fake hypervisor, real
qemu-img): a host with an HDD directory offers its HDD in its record, the scheduler places a VM asking
for HDD there, the agent gives it a second disk of that size and removes it with the VM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers.cluster import request_deletion, vm, wait_for
from tests.integration.test_supervision import Running
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS
from ucloud_common.imagestore import local_image_path
from ucloud_common.specs import Specs
from ucloud_common.quota import QUOTAS, Quota, change, charged, usage
from ucloud_common.states import Requested, Status
from ucloud_common.store import Put, Store
from ucloud_common.vm import VM, VMS
from ucloud_scheduler.fencing import NoFence
from ucloud_scheduler.scheduler import Scheduler
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.fake_driver import FakeDriver
from ucloud_vm.storage import LocalStorage


def test_a_vm_asking_for_hdd_is_placed_on_the_host_offering_it_and_gets_a_second_disk(
        store: Store, quick: Settings, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(images, "tiny")), "16M"], check=True)
    driver = FakeDriver()
    agents = [Agent(store, quick, HostSpec("plain", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10)), FakeDriver(),
                    {"local": LocalStorage(images, tmp_path / "plain")}),
              Agent(store, quick, HostSpec("hdd", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10, hdd=20)), driver,
                    {"local": LocalStorage(images, tmp_path / "disks", tmp_path / "hdd")})]
    running = [Running(agent.run) for agent in agents]
    running.append(Running(Scheduler(store, quick, NoFence(), "s1").run))
    try:
        wait_for(lambda: store.get(HOSTS, "hdd") is not None and store.get(HOSTS, "plain") is not None, 15, "hosts up")
        record = store.get(HOSTS, "hdd")
        assert record is not None and (record.value.capacity.hdd, record.value.hdd_backends) == (20, ("local",))
        plain = store.get(HOSTS, "plain")
        assert plain is not None and (plain.value.capacity.hdd, plain.value.hdd_backends) == (0, ())
        for uuid in ("d1", "d2"):
            store.create(VMS, uuid, VM(uuid=uuid, owner="alice", name=uuid, image="tiny",
                                       specs=Specs(cpu=1, ram=1, ssd=1, hdd=8)))
        wait_for(lambda: all(vm(store, u).status is Status.RUNNING for u in ("d1", "d2")), 20, "both running")
        assert {vm(store, u).host for u in ("d1", "d2")} == {"hdd"}
        hdd = tmp_path / "hdd" / "d1-hdd.qcow2"
        assert driver.guests["d1"].hdd == (f"file={hdd}", "format=qcow2", "cache=writeback", "discard=unmap")
        info = subprocess.run(["qemu-img", "info", "--output=json", str(hdd)], check=True, capture_output=True,
                              text=True).stdout
        assert json.loads(info)["virtual-size"] == 8 * 1024**3
        # A third does not fit in 20 GiB of HDD: refused with the reason, not placed on the host without HDD.
        store.create(VMS, "d3", VM(uuid="d3", owner="alice", name="d3", image="tiny",
                                   specs=Specs(cpu=1, ram=1, ssd=1, hdd=8)))
        wait_for(lambda: "HDD" in vm(store, "d3").error, 15, "d3 refused")
        assert vm(store, "d3").error == "no host has 8 GiB HDD free; the most free is 4 GiB HDD on hdd"
        assert vm(store, "d3").host == ""
        request_deletion(store, "d1")
        wait_for(lambda: store.get(VMS, "d1") is None, 15, "d1 deleted")
        assert not hdd.exists() and not (tmp_path / "disks" / "d1.qcow2").exists()
    finally:
        for each in running:
            each.end()


def test_a_resize_is_charged_to_its_owners_quota_when_written_and_refused_past_it(
        store: Store, quick: Settings, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(images, "tiny")), "16M"], check=True)
    agent = Agent(store, quick, HostSpec("h", "127.0.0.1", Specs(cpu=8, ram=8, ssd=10)), FakeDriver(),
                  {"local": LocalStorage(images, tmp_path / "disks")})
    store.create(QUOTAS, "alice", Quota(user="alice", cpu=3))
    for uuid in ("r1", "r2"):
        made = VM(uuid=uuid, owner="alice", name=uuid, image="tiny", specs=Specs(cpu=1, ram=1, ssd=1))
        store.transact([Put(VMS, uuid, made, 0), charged(store, "alice", change(None, made))])
    running = [Running(agent.run), Running(Scheduler(store, quick, NoFence(), "s1").run)]
    try:
        wait_for(lambda: all(vm(store, u).status is Status.RUNNING for u in ("r1", "r2")), 20, "both running")
        for uuid in ("r1", "r2"):  # a resize is for a STOPPED VM
            store.update(VMS, uuid, lambda v: v.evolve(requested=Requested.STOPPED, generation=v.generation + 1))
        wait_for(lambda: all(vm(store, u).status is Status.STOPPED for u in ("r1", "r2")), 20, "both stopped")

        def ask(uuid: str, cpu: int) -> None:  # as the API does, past its own quota check
            store.update(VMS, uuid, lambda v: v.evolve(resize=v.specs.model_copy(update={"cpu": cpu})))

        ask("r1", 2)
        wait_for(lambda: vm(store, "r1").resize is None, 15, "r1 resized")
        assert vm(store, "r1").specs.cpu == 2 and usage(store, "alice")[0].cpu == 3
        ask("r2", 2)  # one more than the quota's last unit: refused by the scheduler, nothing charged
        wait_for(lambda: vm(store, "r2").resize is None, 15, "r2 decided")
        assert vm(store, "r2").specs.cpu == 1 and "quota cpu" in vm(store, "r2").error
        assert usage(store, "alice")[0].cpu == 3
    finally:
        for each in running:
            each.end()
