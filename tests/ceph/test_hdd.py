"""A VM's HDD disk on a real one-node Ceph: an empty image in the HDD pool, grown with the VM's specs,
removed with the VM, opened by its QEMU through a Ceph client of its own, which the agent records and
the fence cuts off like the system disk's."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.idle_qemu import remove_disk, start_idle_qemu, watchers
from ucloud_common.ceph import Ceph
from ucloud_common.host import Host
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_scheduler.fencing import RBDFence
from ucloud_vm.storage import RBDStorage

GIB = 1024**3
# The image pool stands in for an HDD pool: any pool but the VM pool shows the disk lands where configured.
HDD_POOL = "images"


def test_the_hdd_disk_is_an_empty_image_in_its_pool_fenced_with_the_system_disk(ceph: Ceph, tiny_in_rbd: str,
                                                                                tmp_path: Path) -> None:
    import rbd

    storage = RBDStorage(ceph, "images", "vms", HDD_POOL)
    vm = VM(uuid="hdd-1", owner="alice", name="hdd-1", image="tiny", storage="rbd",
            specs=Specs(cpu=1, ram=0.25, ssd=1, hdd=2))
    remove_disk(storage, vm)
    storage.create(vm)
    storage.create(vm.evolve(specs=vm.specs.model_copy(update={"hdd": 3})))  # a resize, at the next start
    with ceph.pool(HDD_POOL) as ioctx, rbd.Image(ioctx, "hdd-1-hdd", read_only=True) as disk:
        assert disk.size() == 3 * GIB
        assert disk.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        assert disk.read(0, 4096) == bytes(4096), "empty"
    assert not ceph.exists("vms", "hdd-1-hdd")
    assert storage.hdd_drive(vm)[:2] == [f"file=rbd:{HDD_POOL}/hdd-1-hdd:conf={ceph.conf}", "format=raw"]

    old = start_idle_qemu(ceph, storage, vm, tmp_path)
    try:
        system, second = watchers(ceph, "vms", "hdd-1"), watchers(ceph, HDD_POOL, "hdd-1-hdd")
        assert len(system) == 1 and len(second) == 1 and system != second, "a Ceph client per drive"
        # What the agent records on the VM when it starts it, and what a fence must cut off.
        assert storage.clients(vm) == tuple(sorted(system + second))
        RBDFence(ceph, "vms", hdd_pool=HDD_POOL).fence(Host(name="dead", capacity=Specs(cpu=1, ram=1, ssd=1)), [vm])
        assert "write failed" in old.qemu_io("write -P 0x5a 0 4096", drive="disk1")
        assert watchers(ceph, HDD_POOL, "hdd-1-hdd") == []
    finally:
        old.kill()
    remove_disk(storage, vm)
    assert not ceph.exists(HDD_POOL, "hdd-1-hdd") and not ceph.exists("vms", "hdd-1")
