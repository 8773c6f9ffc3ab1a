"""Storage backends: where a VM's disk lives. One small interface; `local` here, `rbd` (Ceph) later.

Contract for every backend: `create` is idempotent (an existing disk is kept, so a restarted agent
never wipes a disk) and leaves nothing half made when it fails; `delete` is idempotent; `drive`
gives QEMU's `-drive` options, always with an explicit `format=`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from ucloud_common.ceph import Ceph, CephError, CephUnavailable
from ucloud_common.errors import PermanentError
from ucloud_common.imagestore import local_image_path
from ucloud_common.qemuimg import QemuImgError, qemu_img
from ucloud_common.vm import VM

log = logging.getLogger(__name__)

GIB = 1024**3


class StorageError(PermanentError):
    """The disk could not be made or removed; `str()` says why, for the VM's `error`. (A Ceph that
    did not answer raises `CephUnavailable` instead: temporary, the same call is tried again.)"""


class StorageBackend(Protocol):
    name: str

    def create(self, vm: VM) -> None: ...

    def exists(self, vm: VM) -> bool: ...

    def drive(self, vm: VM) -> list[str]: ...

    def delete(self, vm: VM) -> None: ...

    def clients(self, vm: VM) -> tuple[str, ...]:
        """Who has the VM's disk open now, as a fence of shared storage would name them (for the
        VM record, right after its QEMU started); () where nothing can be fenced."""
        ...


class LocalStorage:
    """A qcow2 copy-on-write overlay on the image's raw file in the local image store, grown to the
    VM's ssd size."""

    name = "local"

    def __init__(self, image_dir: Path, disk_dir: Path) -> None:
        self._images = image_dir
        self._disks = disk_dir

    def image_path(self, image: str) -> Path:
        return local_image_path(self._images, image)

    def disk_path(self, vm: VM) -> Path:
        return self._disks / f"{vm.uuid}.qcow2"

    def exists(self, vm: VM) -> bool:
        return self.disk_path(vm).is_file()

    def create(self, vm: VM) -> None:
        disk = self.disk_path(vm)
        if disk.is_file():
            return
        image = self.image_path(vm.image)
        if not image.is_file():
            raise StorageError(f"image {vm.image} is not in this host's image store ({self._images})")
        image_size = image.stat().st_size  # the store holds raw images only
        size = vm.specs.ssd * GIB
        if size < image_size:
            raise StorageError(f"the image is {image_size / GIB:.2f} GiB, more than the VM's ssd of {vm.specs.ssd} GiB")
        self._disks.mkdir(parents=True, exist_ok=True)
        partial = disk.with_suffix(".partial")
        try:
            qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(partial), str(size))
        except QemuImgError as exc:
            raise StorageError(str(exc)) from None
        os.replace(partial, disk)
        log.info("vm=%s disk %s created on image %s (%d GiB)", vm.uuid, disk, vm.image, vm.specs.ssd)

    def drive(self, vm: VM) -> list[str]:
        return [f"file={self.disk_path(vm)}", "format=qcow2", "cache=writeback", "discard=unmap"]

    def clients(self, vm: VM) -> tuple[str, ...]:
        return ()  # a local disk is never started elsewhere: nothing to fence

    def delete(self, vm: VM) -> None:
        for path in (self.disk_path(vm), self.disk_path(vm).with_suffix(".partial")):
            path.unlink(missing_ok=True)


class RBDStorage:
    """A copy-on-write clone of the image's protected snapshot in the image pool, grown to the VM's
    ssd size, with the exclusive-lock feature; QEMU opens it as an `rbd:` drive."""

    name = "rbd"

    def __init__(self, ceph: Ceph, image_pool: str, vm_pool: str) -> None:
        self._ceph = ceph
        self._image_pool = image_pool
        self._vm_pool = vm_pool

    def exists(self, vm: VM) -> bool:
        return self._ceph.exists(self._vm_pool, vm.uuid)

    def create(self, vm: VM) -> None:
        try:
            self._ceph.clone_disk(self._image_pool, vm.image, self._vm_pool, vm.uuid, vm.specs.ssd)
        except CephUnavailable:
            raise
        except CephError as exc:
            raise StorageError(str(exc)) from None
        log.info("vm=%s disk %s/%s cloned from %s/%s (%d GiB)", vm.uuid, self._vm_pool, vm.uuid,
                 self._image_pool, vm.image, vm.specs.ssd)

    def drive(self, vm: VM) -> list[str]:
        return [f"file=rbd:{self._vm_pool}/{vm.uuid}:conf={self._ceph.conf}", "format=raw", "cache=writeback",
                "discard=unmap"]

    def delete(self, vm: VM) -> None:
        try:
            self._ceph.remove(self._vm_pool, vm.uuid)
        except CephUnavailable:
            raise
        except CephError as exc:
            raise StorageError(str(exc)) from None

    def clients(self, vm: VM) -> tuple[str, ...]:
        """The QEMU opened its disk read-write when it started, so it watches it: its client instance
        is among the watchers (with any not yet expired of an earlier QEMU, which a fence may
        blocklist too without harm)."""
        try:
            found = self._ceph.image_clients(self._vm_pool, vm.uuid)
        except CephError as exc:
            log.warning("vm=%s cannot list the clients of its disk (a fence will rely on watchers): %s", vm.uuid, exc)
            return ()
        return tuple(sorted(found.addresses)) if found else ()
