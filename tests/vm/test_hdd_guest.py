"""A VM with an HDD disk, booted in real QEMU (TCG): the tiny guest, asked on its serial console,
sees a second virtio disk (/dev/vdb) of the VM's hdd size, next to its system disk (/dev/vda)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.helpers.cluster import wait_for
from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.imagestore import local_image_path
from ucloud_common.vm import VM
from ucloud_vm.paths import VMPaths
from ucloud_vm.qemu import QemuDriver
from ucloud_vm.storage import LocalStorage

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu")

SECTOR = 512


def test_the_guest_sees_its_hdd_disk_as_vdb_of_the_right_size(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny_image() / "tiny.raw", local_image_path(images, "tiny"))
    storage = LocalStorage(images, tmp_path / "disks", tmp_path / "hdd")
    vm = VM.model_validate({"uuid": "hdd-guest", "owner": "alice", "name": "web", "image": "tiny",
                            "specs": {"cpu": 1, "ram": 0.25, "ssd": 1, "hdd": 3}})
    storage.create(vm)
    driver = QemuDriver(tmp_path / "run", "tcg")
    paths = VMPaths.of(tmp_path / "run", vm.uuid)
    driver.start(vm, storage.drive(vm), paused=False, seed={"meta-data": b""}, nics={}, hdd=storage.hdd_drive(vm))
    try:
        wait_for(lambda: BOOTED in paths.serial.read_text(errors="replace"), 60, "the guest booted")
        expected = f"sizes {1024**3 // SECTOR} {3 * 1024**3 // SECTOR} end".encode()
        with socket.socket(socket.AF_UNIX) as console:
            console.connect(str(paths.serial_socket))
            console.settimeout(0.5)
            heard = bytearray()

            def typed() -> bool:
                """Type the question; whether the answer came back within a few seconds (the shell may
                not have started yet: typed again)."""
                console.sendall(b"echo sizes $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size) end\n")
                deadline = time.monotonic() + 5
                while expected not in heard and time.monotonic() < deadline:
                    try:
                        heard.extend(console.recv(4096))
                    except TimeoutError:
                        pass
                return expected in heard
            wait_for(typed, 90, f"the guest's answer {expected!r}")
    finally:
        driver.kill(vm.uuid)
