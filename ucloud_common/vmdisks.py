"""Where a VM's disks are, by name: the agent makes them there (ucloud_vm.storage) and the scheduler's
fence finds them there (ucloud_scheduler.fencing), so the names are built here and nowhere else.

A VM has its system disk (a clone of its image, `specs.ssd` GiB) and, when it asks for `specs.hdd`
GiB, an empty second disk. The second disk's name carries a suffix, so the two never collide even
where an operator gives both kinds one place (the same directory, or the same RBD pool).
"""

from __future__ import annotations

from dataclasses import dataclass

from ucloud_common.vm import VM

HDD_SUFFIX = "-hdd"


def hdd_name(uuid: str) -> str:
    """The name of the VM's HDD disk (an RBD image's, or a local file's stem)."""
    return uuid + HDD_SUFFIX


@dataclass(frozen=True)
class RBDPools:
    """The pools VM disks live in: `ssd` the system disks (UCLOUD_CEPH_VM_POOL), `hdd` the HDD disks
    (UCLOUD_CEPH_HDD_POOL; "" where none is configured)."""

    ssd: str
    hdd: str = ""

    def every_disk(self, uuid: str) -> tuple[tuple[str, str], ...]:
        """(pool, image) of every RBD disk a VM may have had, whatever its specs say now (for its deletion)."""
        return ((self.ssd, uuid), (self.hdd, hdd_name(uuid))) if self.hdd else ((self.ssd, uuid),)

    def disks(self, vm: VM) -> tuple[tuple[str, str], ...]:
        """(pool, image) of each RBD disk the VM may have: its system disk, and its HDD disk when it asks
        for one (which may not exist yet: a VM grown from no HDD gets it at its next start)."""
        every = self.every_disk(vm.uuid)
        return every if vm.specs.hdd else every[:1]
