"""The RBD fence counts a host as fenced only once it has verified the fence: each way verification can
fail raises FenceFailed saying what was not verified. Ceph is replaced by a mock (error paths only:
the real behaviour is in test_fence.py)."""

from __future__ import annotations

from unittest.mock import Mock

import pytest
from pytest_mock import MockerFixture

from ucloud_common.ceph import Ceph, CephError, ImageClients, Locker
from ucloud_common.host import Host
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_scheduler.fencing import FenceFailed, RBDFence

DEAD = Host(name="h2", capacity=Specs(cpu=1, ram=1, ssd=1))
QEMU = "10.0.0.2:0/123456"
HOLDER = Locker(client="client.4154", cookie="auto 1", address="10.0.0.2:0/777")
OPEN = ImageClients(watchers=frozenset({QEMU}), lockers=(HOLDER,))


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny", storage="rbd")


@pytest.fixture
def ceph(mocker: MockerFixture) -> Mock:
    """A Ceph on which everything works (each test breaks one thing): the disk is open by QEMU and
    HOLDER, blocklisting them makes the OSD drop them, and breaking the lock frees it. The working
    path itself is tested against the real Ceph in test_fence.py."""
    ceph = mocker.create_autospec(Ceph, instance=True)
    ceph.image_clients.side_effect = [OPEN, ImageClients(watchers=frozenset(), lockers=())]
    ceph.blocklisted.return_value = frozenset({QEMU, HOLDER.address})
    ceph.watchers.return_value = frozenset()
    return ceph


def test_an_address_missing_from_the_blocklist_fails_the_fence(ceph: Mock) -> None:
    ceph.blocklisted.return_value = frozenset({HOLDER.address})  # the monitor did not keep QEMU's entry
    with pytest.raises(FenceFailed, match=f"cannot fence host h2: {QEMU} not in the OSD blocklist"):
        RBDFence(ceph, "vms", timeout=0.5).fence(DEAD, [a_vm("vm-1")])
    ceph.break_lock.assert_not_called()


def test_a_watch_the_osd_keeps_fails_the_fence_after_the_timeout(ceph: Mock) -> None:
    ceph.watchers.return_value = frozenset({QEMU, "10.0.0.9:0/1"})  # another client is fine, QEMU is not
    with pytest.raises(FenceFailed, match=f"vms/vm-1 is still watched by {QEMU} 0.3 s after blocklisting"):
        RBDFence(ceph, "vms", timeout=0.3).fence(DEAD, [a_vm("vm-1")])
    ceph.break_lock.assert_not_called()


def test_a_lock_left_after_breaking_it_fails_the_fence(ceph: Mock) -> None:
    ceph.image_clients.side_effect = [OPEN, ImageClients(watchers=frozenset(), lockers=(HOLDER,))]
    with pytest.raises(FenceFailed, match=f"vms/vm-1 is still open by {HOLDER.address} after blocklisting"):
        RBDFence(ceph, "vms", timeout=0.5).fence(DEAD, [a_vm("vm-1")])


def test_a_failure_on_one_disk_fails_the_fence_but_the_others_are_fenced(ceph: Mock) -> None:
    def clients(pool: str, disk: str) -> ImageClients:
        if disk == "vm-2":
            raise CephError(f"cannot list the clients of {pool}/{disk}: [errno 110] Connection timed out")
        return OPEN if not ceph.break_lock.called else ImageClients(watchers=frozenset(), lockers=())

    ceph.image_clients.side_effect = clients
    with pytest.raises(FenceFailed, match="cannot fence host h2: cannot list the clients of vms/vm-2: .*timed out"):
        RBDFence(ceph, "vms", timeout=0.5).fence(DEAD, [a_vm("vm-1"), a_vm("vm-2")])
    ceph.break_lock.assert_called_once_with("vms", "vm-1", HOLDER)  # vm-1's clients were cut off all the same
