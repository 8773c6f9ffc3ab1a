"""Storage backends: where a VM's disks live. One small interface; `local` (files) and `rbd` (Ceph).

A VM has its system disk, a copy-on-write clone of its image of `specs.ssd` GiB, and, when it asks
for `specs.hdd` GiB, an empty second disk in the backend's HDD place (a directory, an RBD pool).

Contract for every backend: `create` is idempotent (an existing disk is kept, so a restarted agent
never wipes a disk; one smaller than the VM's specs is grown to them, which is how a resize reaches
the disks at the VM's next start) and leaves nothing half made when it fails; `delete` is
idempotent and removes both disks; `drive` and `hdd_drive` give QEMU's `-drive` options, always with
an explicit `format=`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

from ucloud_common.ceph import Ceph, CephError, CephUnavailable
from ucloud_common.errors import PermanentError
from ucloud_common.imagestore import local_image_path
from ucloud_common.qemuimg import QemuImgError, qemu_img
from ucloud_common.vm import VM
from ucloud_common.vmdisks import RBDPools, hdd_name

log = logging.getLogger(__name__)

GIB = 1024**3


class StorageError(PermanentError):
    """The disk could not be made or removed; `str()` says why, for the VM's `error`. (A Ceph that
    did not answer raises `CephUnavailable` instead: temporary, the same call is tried again.)"""


class StorageBackend(Protocol):
    name: str
    offers_hdd: bool  # it has a place for HDD disks: VMs asking for `hdd` may be placed on it

    def create(self, vm: VM) -> None: ...

    def exists(self, vm: VM) -> bool: ...

    def drive(self, vm: VM) -> list[str]: ...

    def hdd_drive(self, vm: VM) -> list[str] | None:
        """The HDD disk's `-drive` options; None for a VM without one."""
        ...

    def delete(self, vm: VM) -> None: ...

    def clients(self, vm: VM) -> tuple[str, ...]:
        """Who has one of the VM's disks open now, as a fence of shared storage would name them (for
        the VM record, right after its QEMU started); () where nothing can be fenced."""
        ...


class LocalStorage:
    """A qcow2 copy-on-write overlay on the image's raw file in the local image store, grown to the
    VM's ssd size; the HDD disk an empty qcow2 file in `hdd_dir` (None: this host has no HDD place)."""

    name = "local"

    def __init__(self, image_dir: Path, disk_dir: Path, hdd_dir: Path | None = None) -> None:
        self._images = image_dir
        self._disks = disk_dir
        self._hdd = hdd_dir
        self.offers_hdd = hdd_dir is not None

    def image_path(self, image: str) -> Path:
        return local_image_path(self._images, image)

    def disk_path(self, vm: VM) -> Path:
        return self._disks / f"{vm.uuid}.qcow2"

    def hdd_path(self, vm: VM) -> Path | None:
        return self._hdd / f"{hdd_name(vm.uuid)}.qcow2" if self._hdd is not None else None

    def exists(self, vm: VM) -> bool:
        return self.disk_path(vm).is_file()

    def create(self, vm: VM) -> None:
        disk = self.disk_path(vm)
        if disk.is_file():
            _grow(disk, vm.specs.ssd)
        else:
            self._create_system_disk(vm, disk)
        if vm.specs.hdd:
            self._create_hdd(vm)

    def _create_system_disk(self, vm: VM, disk: Path) -> None:
        image = self.image_path(vm.image)
        if not image.is_file():
            raise StorageError(f"image {vm.image} is not in this host's image store ({self._images})")
        image_size = image.stat().st_size  # the store holds raw images only
        size = vm.specs.ssd * GIB
        if size < image_size:
            raise StorageError(f"the image is {image_size / GIB:.2f} GiB, more than the VM's ssd of {vm.specs.ssd} GiB")
        _made(disk, "-F", "raw", "-b", str(image), size=size)
        log.info("vm=%s disk %s created on image %s (%d GiB)", vm.uuid, disk, vm.image, vm.specs.ssd)

    def _create_hdd(self, vm: VM) -> None:
        path = self.hdd_path(vm)
        if path is None:
            raise StorageError(f"the VM asks for {vm.specs.hdd} GiB HDD but this host keeps no HDD disks "
                               "(UCLOUD_HDD_DIR is not set)")
        if path.is_file():
            _grow(path, vm.specs.hdd)
            return
        _made(path, size=vm.specs.hdd * GIB)
        log.info("vm=%s HDD disk %s created (%d GiB)", vm.uuid, path, vm.specs.hdd)

    def drive(self, vm: VM) -> list[str]:
        return _qcow2_drive(self.disk_path(vm))

    def hdd_drive(self, vm: VM) -> list[str] | None:
        path = self.hdd_path(vm)
        return _qcow2_drive(path) if vm.specs.hdd and path is not None else None

    def clients(self, vm: VM) -> tuple[str, ...]:
        return ()  # a local disk is never started elsewhere: nothing to fence

    def delete(self, vm: VM) -> None:
        for disk in (self.disk_path(vm), self.hdd_path(vm)):
            if disk is not None:
                disk.unlink(missing_ok=True)
                disk.with_suffix(".partial").unlink(missing_ok=True)


def _qcow2_drive(path: Path) -> list[str]:
    return [f"file={path}", "format=qcow2", "cache=writeback", "discard=unmap"]


def _made(disk: Path, *backing: str, size: int) -> None:
    """Make the qcow2 file `disk` of `size` bytes (on `backing`, qemu-img's -F/-b options) under a
    temporary name, renamed into place once complete: a failure leaves no disk that looks whole."""
    disk.parent.mkdir(parents=True, exist_ok=True)
    partial = disk.with_suffix(".partial")
    try:
        qemu_img("create", "-q", "-f", "qcow2", *backing, str(partial), str(size))
    except QemuImgError as exc:
        raise StorageError(str(exc)) from None
    os.replace(partial, disk)


def _grow(disk: Path, size_gib: int) -> None:
    """Grow the qcow2 file to size_gib if it is smaller (never shrink: the guest's data would be cut)."""
    try:
        # -U: reading the size needs no lock, so a look never fails for a process that has the file
        # open; growing it does, and fails then, as it must.
        current = int(json.loads(qemu_img("info", "-U", "-f", "qcow2", "--output=json", str(disk)))["virtual-size"])
        if current < size_gib * GIB:
            qemu_img("resize", "-q", "-f", "qcow2", str(disk), str(size_gib * GIB))
            log.info("disk %s grown from %d to %d GiB", disk, current // GIB, size_gib)
    except (QemuImgError, ValueError, KeyError) as exc:
        raise StorageError(f"cannot grow {disk} to {size_gib} GiB: {exc}") from None


class RBDStorage:
    """A copy-on-write clone of the image's protected snapshot in the image pool, grown to the VM's
    ssd size, with the exclusive-lock feature; QEMU opens it as an `rbd:` drive. The HDD disk is an
    empty image in the HDD pool (`hdd_pool`, "" for none) with the same feature: both are shared,
    so a VM with both migrates and restarts elsewhere alike, and a fence covers both."""

    name = "rbd"

    def __init__(self, ceph: Ceph, image_pool: str, vm_pool: str, hdd_pool: str = "") -> None:
        self._ceph = ceph
        self._image_pool = image_pool
        self._pools = RBDPools(vm_pool, hdd_pool)
        self.offers_hdd = bool(hdd_pool)

    def exists(self, vm: VM) -> bool:
        return self._ceph.exists(self._pools.ssd, vm.uuid)

    def create(self, vm: VM) -> None:
        try:
            self._ceph.clone_disk(self._image_pool, vm.image, self._pools.ssd, vm.uuid, vm.specs.ssd)
            if vm.specs.hdd:
                if not self._pools.hdd:
                    raise CephError(f"the VM asks for {vm.specs.hdd} GiB HDD but this host has no HDD pool "
                                    "(UCLOUD_CEPH_HDD_POOL is not set)")
                self._ceph.empty_disk(self._pools.hdd, hdd_name(vm.uuid), vm.specs.hdd)
        except CephUnavailable:
            raise
        except CephError as exc:
            raise StorageError(str(exc)) from None
        log.info("vm=%s disks ready: %s/%s on %s/%s (%d GiB)%s", vm.uuid, self._pools.ssd, vm.uuid,
                 self._image_pool, vm.image, vm.specs.ssd,
                 f", {self._pools.hdd}/{hdd_name(vm.uuid)} ({vm.specs.hdd} GiB)" if vm.specs.hdd else "")

    def drive(self, vm: VM) -> list[str]:
        return self._drive(self._pools.ssd, vm.uuid)

    def hdd_drive(self, vm: VM) -> list[str] | None:
        return self._drive(self._pools.hdd, hdd_name(vm.uuid)) if vm.specs.hdd and self._pools.hdd else None

    def _drive(self, pool: str, name: str) -> list[str]:
        return [f"file=rbd:{pool}/{name}:conf={self._ceph.conf}", "format=raw", "cache=writeback", "discard=unmap"]

    def delete(self, vm: VM) -> None:
        try:
            for pool, name in self._pools.every_disk(vm.uuid):
                self._ceph.remove(pool, name)
        except CephUnavailable:
            raise
        except CephError as exc:
            raise StorageError(str(exc)) from None

    def clients(self, vm: VM) -> tuple[str, ...]:
        """The QEMU opened its disks read-write when it started, so it watches them: its client
        instances (one per disk: QEMU connects to Ceph once per drive) are among the watchers (with
        any not yet expired of an earlier QEMU, which a fence may blocklist too without harm)."""
        found: set[str] = set()
        for pool, name in self._pools.disks(vm):
            try:
                clients = self._ceph.image_clients(pool, name)
            except CephError as exc:
                log.warning("vm=%s cannot list the clients of %s/%s (a fence will rely on watchers): %s",
                            vm.uuid, pool, name, exc)
                continue
            found |= clients.addresses if clients else set()
        return tuple(sorted(found))
