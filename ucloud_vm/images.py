"""Importing an image file into this host's local image store (an admin's command, e.g. for the
tiny test image). The file is inspected before it is converted: only raw and qcow2, and never a
qcow2 that points at another file (a backing file or an external data file could make the store
read a host file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.store import Store
from ucloud_vm.storage import StorageError, qemu_img

ACCEPTED_FORMATS = ("raw", "qcow2")


def inspect(path: Path) -> str:
    """The file's format, or StorageError saying why it is refused."""
    info = json.loads(qemu_img("info", "--output=json", str(path)))
    fmt = info.get("format")
    if fmt not in ACCEPTED_FORMATS:
        raise StorageError(f"{path}: format {fmt} is not accepted (only {', '.join(ACCEPTED_FORMATS)})")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise StorageError(f"{path}: has a backing file ({info.get('backing-filename')}); refused")
    if (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise StorageError(f"{path}: has an external data file; refused")
    return str(fmt)


def import_image(store: Store, image_dir: Path, path: Path, uuid: str, name: str, owner: str,
                 public: bool, ceph: Ceph | None = None, pool: str = "local") -> Image:
    """Into the local store (`image_dir/<uuid>.raw`), or, with `ceph`, into RBD `pool/<uuid>@base`."""
    fmt = inspect(path)
    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / f"{uuid}.raw"
    partial = target.with_suffix(".partial")
    try:
        qemu_img("convert", "-q", "-f", fmt, "-O", "raw", str(path), str(partial))
        if ceph is None:
            os.replace(partial, target)
        else:
            try:
                ceph.store_image(pool, uuid, partial)
            except CephError as exc:
                raise StorageError(str(exc)) from None
    finally:
        partial.unlink(missing_ok=True)
    image = Image(uuid=uuid, owner=owner, name=name, store_name="local" if ceph is None else pool, public=public,
                  status=ImageStatus.CREATED)
    current = store.get(IMAGES, uuid)
    if current is None:
        store.create(IMAGES, uuid, image)
    else:
        store.replace(IMAGES, uuid, image, current.mod_revision)
    return image
