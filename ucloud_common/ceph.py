"""Ceph RBD, shared by the agent (VM disks), the scheduler (fencing) and image-scanner (image stores).

An image in an RBD store is `<pool>/<image uuid>` with a protected snapshot `base`; a VM disk is
`<vm pool>/<vm uuid>`, a copy-on-write clone of that snapshot, with the exclusive-lock feature, so
only one QEMU at a time writes it. Fencing a dead host breaks the locks its QEMUs held: Ceph then
blocklists that client, and its next write fails even if the host was only thought dead.

The bindings (`rados`, `rbd`) are Debian's and imported only when Ceph is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SNAPSHOT = "base"
GIB = 1024**3


class CephError(Exception):
    """An RBD operation failed; `str()` says which and why."""


class Ceph:
    def __init__(self, conf: Path, client: str = "admin", timeout: float = 10.0) -> None:
        import rados

        self.conf = conf
        self._cluster = rados.Rados(conffile=str(conf), name=f"client.{client}")
        self._cluster.conf_set("rados_osd_op_timeout", str(int(timeout)))
        self._cluster.conf_set("rados_mon_op_timeout", str(int(timeout)))
        try:
            self._cluster.connect(timeout=int(timeout))
        except rados.Error as exc:
            raise CephError(f"cannot connect to Ceph ({conf}): {exc}") from None

    def close(self) -> None:
        self._cluster.shutdown()

    @contextmanager
    def pool(self, name: str) -> Iterator[Any]:
        import rados

        try:
            ioctx = self._cluster.open_ioctx(name)
        except rados.Error as exc:
            raise CephError(f"cannot open pool {name}: {exc}") from None
        try:
            yield ioctx
        finally:
            ioctx.close()

    # -- VM disks ---------------------------------------------------------------------------------

    def clone_disk(self, image_pool: str, image: str, vm_pool: str, disk: str, size_gib: int) -> None:
        """Clone `image_pool/image@base` to `vm_pool/disk` (kept if it exists) and grow it to size_gib."""
        import rbd

        with self.pool(image_pool) as parent, self.pool(vm_pool) as child:
            try:
                rbd.RBD().clone(parent, image, SNAPSHOT, child, disk,
                                features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK)
            except rbd.ImageExists:
                pass
            except rbd.ImageNotFound:
                raise CephError(f"image {image} is not in pool {image_pool}") from None
            except rbd.Error as exc:
                raise CephError(f"cannot clone {image_pool}/{image}@{SNAPSHOT}: {exc}") from None
            try:
                with rbd.Image(child, disk) as handle:
                    if handle.size() < size_gib * GIB:
                        handle.resize(size_gib * GIB)
            except rbd.Error as exc:
                raise CephError(f"cannot resize {vm_pool}/{disk}: {exc}") from None

    def exists(self, pool: str, name: str) -> bool:
        import rbd

        with self.pool(pool) as ioctx:
            return name in rbd.RBD().list(ioctx)

    def remove(self, pool: str, name: str) -> None:
        """Remove an image (absent is fine)."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass
            except rbd.Error as exc:
                raise CephError(f"cannot remove {pool}/{name}: {exc}") from None

    def break_locks(self, pool: str, name: str) -> list[str]:
        """Break the locks on an image, blocklisting their holders; return the holders."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as handle:
                    owners = list(handle.lock_get_owners())
                    for owner in owners:
                        handle.lock_break(owner["mode"], owner["owner"])
            except rbd.ImageNotFound:
                return []
            except rbd.Error as exc:
                raise CephError(f"cannot break the lock on {pool}/{name}: {exc}") from None
        return [str(owner["owner"]) for owner in owners]

    # -- image stores -----------------------------------------------------------------------------

    def store_image(self, pool: str, name: str, raw: Path) -> None:
        """Write a raw file as `pool/name`, snapshot it as `base` and protect the snapshot; any
        earlier partial attempt is removed first, and a failure leaves nothing behind."""
        import rbd

        size = raw.stat().st_size
        self.remove_image(pool, name)
        with self.pool(pool) as ioctx:
            try:
                rbd.RBD().create(ioctx, name, size, features=rbd.RBD_FEATURE_LAYERING)
                with rbd.Image(ioctx, name) as handle, open(raw, "rb") as source:
                    offset = 0
                    while chunk := source.read(4 * 1024 * 1024):
                        if chunk.count(0) != len(chunk):  # leave holes sparse
                            handle.write(chunk, offset)
                        offset += len(chunk)
                    handle.create_snap(SNAPSHOT)
                    handle.protect_snap(SNAPSHOT)
            except (rbd.Error, OSError) as exc:
                self.remove_image(pool, name)
                raise CephError(f"cannot store image {pool}/{name}: {exc}") from None

    def remove_image(self, pool: str, name: str) -> None:
        """Remove an image with its snapshot (it must have no clones left)."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as handle:
                    for snap in list(handle.list_snaps()):
                        if handle.is_protected_snap(snap["name"]):
                            handle.unprotect_snap(snap["name"])
                        handle.remove_snap(snap["name"])
            except rbd.ImageNotFound:
                return
            except rbd.Error as exc:
                raise CephError(f"cannot remove image {pool}/{name}: {exc}") from None
        self.remove(pool, name)
