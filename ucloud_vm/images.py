"""Importing an image file into an image store (an admin's command, e.g. for the tiny test image).

The same checks as image-scanner's (`ucloud_common.diskformat`): only raw and qcow2, judged from the
header before qemu-img opens the file, and never a qcow2 that points at another file (a backing file
or an external data file could make qemu-img read a host file into the store).
"""

from __future__ import annotations

import os
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.diskformat import HEADER_BYTES, Refused, judge
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.qemuimg import QemuImgError, qemu_img
from ucloud_common.store import Store
from ucloud_vm.storage import StorageError

MAX_IMPORT_BYTES = 1024 * 2**30


def inspect(path: Path) -> str:
    """The file's format, or StorageError saying why it is refused."""
    with open(path, "rb") as file:
        header = file.read(HEADER_BYTES)
    try:
        return judge(header, path.stat().st_size, MAX_IMPORT_BYTES).format
    except Refused as exc:
        raise StorageError(f"{path}: {exc}") from None


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
            ceph.store_image(pool, uuid, partial)
    except (QemuImgError, CephError) as exc:
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
