"""Fencing against real QEMUs on a real one-node Ceph: a QEMU whose guest never wrote holds no lock,
yet after the fence it must not be able to write a single block."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.idle_qemu import IdleQEMU, a_vm, idle_qemus, lockers, watchers
from ucloud_common.ceph import Ceph
from ucloud_common.host import Host
from ucloud_common.specs import Specs
from ucloud_scheduler.fencing import RBDFence
from ucloud_vm.storage import RBDStorage

DEAD = Host(name="dead", capacity=Specs(cpu=1, ram=1, ssd=1))
PATTERN = 0x5A
BLOCK = 4096


def pattern_on_disk(ceph: Ceph, uuid: str) -> bool:
    """Whether the first block of vms/<uuid>, read through rbd by another client, holds PATTERN."""
    import rbd

    with ceph.pool("vms") as ioctx, rbd.Image(ioctx, uuid, read_only=True) as image:
        return image.read(0, BLOCK) == bytes([PATTERN]) * BLOCK


def assert_cut_off(ceph: Ceph, old: IdleQEMU) -> None:
    """The old QEMU's write fails, and nothing of it reached the disk."""
    printed = old.qemu_io(f"write -P {PATTERN:#x} 0 {BLOCK}")
    old.monitor("qemu-io disk0 flush")  # had the write got through, it is on the OSDs before we read
    assert "write failed" in printed, f"the fenced QEMU of {old.vm.uuid} could still write: {printed!r}"
    assert not pattern_on_disk(ceph, old.vm.uuid), f"the fenced QEMU's write reached vms/{old.vm.uuid}"


def test_fencing_cuts_off_an_idle_qemu_that_holds_no_lock(ceph: Ceph, tiny_in_rbd: str, tmp_path: Path) -> None:
    with idle_qemus(ceph, tmp_path, ["idle-1"]) as [old]:
        # The bug's precondition: QEMU has the disk open, but has never written, so holds no lock.
        assert len(watchers(ceph, "vms", "idle-1")) == 1
        assert lockers(ceph, "vms", "idle-1") == []

        RBDFence(ceph, "vms").fence(DEAD, [old.vm])

        assert_cut_off(ceph, old)
        assert watchers(ceph, "vms", "idle-1") == []  # the OSD dropped its watch before the fence returned


def test_fencing_five_idle_qemus_at_once_cuts_off_every_one(ceph: Ceph, tiny_in_rbd: str, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    uuids = [f"idle-{i}" for i in range(5)]
    with idle_qemus(ceph, tmp_path, uuids) as olds:
        clients = {uuid: watchers(ceph, "vms", uuid) for uuid in uuids}
        assert all(len(addresses) == 1 for addresses in clients.values()), clients
        assert all(lockers(ceph, "vms", uuid) == [] for uuid in uuids)
        fence = RBDFence(ceph, "vms")

        with caplog.at_level(logging.INFO, logger="ucloud_scheduler.fencing"):
            fence.fence(DEAD, [old.vm for old in olds] + [a_vm("never-created")])  # an absent disk is fine

        for old in olds:
            assert_cut_off(ceph, old)
        for uuid, [address] in clients.items():
            assert f"fenced host dead: blocklisted {address} (watcher of vms/{uuid})" in caplog.text
        fence.fence(DEAD, [old.vm for old in olds])  # idempotent: fencing a fenced host again is fine


def test_a_qemu_whose_watch_expired_is_cut_off_by_the_client_its_agent_recorded(
        ceph: Ceph, tiny_in_rbd: str, tmp_path: Path) -> None:
    """A QEMU that reached no OSD for 30 s has no watch left for a fence to find, and would write
    again the moment it can (this test fails so without `disk_clients`); the agent recorded its
    client when it started it, so it is refused."""
    with idle_qemus(ceph, tmp_path, ["silent"]) as [old]:
        recorded = RBDStorage(ceph, "images", "vms").clients(old.vm)  # what the agent writes on the VM
        assert recorded == tuple(watchers(ceph, "vms", "silent"))
        os.kill(old.process.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while watchers(ceph, "vms", "silent"):  # osd_client_watch_timeout: 30 s
                assert time.monotonic() < deadline, "the stopped QEMU's watch never expired"
                time.sleep(1)
            RBDFence(ceph, "vms").fence(DEAD, [old.vm.model_copy(update={"disk_clients": recorded})])
        finally:
            os.kill(old.process.pid, signal.SIGCONT)
        assert_cut_off(ceph, old)
