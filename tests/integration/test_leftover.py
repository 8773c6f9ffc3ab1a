"""A VM the API deleted while its host was down (`ucloud_common.leftover`), removed from that host
by its agent once back: on a real etcd, the fake hypervisor, real local storage."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cluster import wait_for
from tests.integration.test_supervision import Running
from ucloud_common.host import HOSTS
from ucloud_common.leftover import LEFTOVERS, Leftover, leftover_name
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.vm import VM
from ucloud_vm.agent import Agent


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny",
              hostname=HOSTS.key("h1"), status=Status.KILLED)


def test_an_agent_back_removes_the_disks_of_its_vms_deleted_while_it_was_down(agent: Agent, store: Store,
                                                                             tmp_path: Path) -> None:
    disks = tmp_path / "disks"
    disks.mkdir(exist_ok=True)
    deleted, kept = a_vm("gone"), a_vm("nobody-said")
    for vm in (deleted, kept):
        (disks / f"{vm.uuid}.qcow2").write_bytes(b"the guest's data")
    store.create(LEFTOVERS, leftover_name("h1", deleted.uuid), Leftover(host="h1", vm=deleted))
    store.create(LEFTOVERS, leftover_name("h2", kept.uuid), Leftover(host="h2", vm=kept))  # another host's
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(LEFTOVERS, leftover_name("h1", deleted.uuid)) is None, 15, "the leftover cleared")
    finally:
        running.end()
    assert not (disks / "gone.qcow2").exists()
    # A disk no record names and no leftover of this host mentions is kept: a missing record alone
    # (an etcd restored from an older backup) never deletes a guest's data.
    assert (disks / "nobody-said.qcow2").read_bytes() == b"the guest's data"
    assert store.get(LEFTOVERS, leftover_name("h2", kept.uuid)) is not None
