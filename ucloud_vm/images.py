"""Importing an image file into an image store (an admin's command, e.g. for the tiny test image).

The image is made exactly as image-scanner makes a user's: the request is written (TO_BE_CREATED),
then `imagestore.build` checks and converts the file (raw and qcow2 only, judged from the header
before qemu-img opens it, never a qcow2 pointing at another file, qemu-img under limits, at most
`image_max_size`) and `imagestore.settle` records the outcome. Only the sha512 check is skipped:
an admin's file was never registered by file-scan.
"""

from __future__ import annotations

import os
from pathlib import Path

from ucloud_common.ceph import Ceph
from ucloud_common.config import Settings
from ucloud_common.image import IMAGES, Image
from ucloud_common.imagestore import Built, Outcome, build, served_pool, settle
from ucloud_common.store import Store


def import_image(store: Store, settings: Settings, path: Path, request: Image, ceph: Ceph | None = None) -> Outcome:
    """Make `request` (a TO_BE_CREATED image) from the file at `path`, replacing any image of the
    same uuid. Raises PermanentError, before writing anything, if its store is not served here
    (`served_pool`), and StoreUnavailable if etcd cannot be reached."""
    served_pool(settings, request.store_name, ceph)
    current = store.get(IMAGES, request.uuid)
    if current is None:
        store.create(IMAGES, request.uuid, request)
    else:
        store.replace(IMAGES, request.uuid, request, current.mod_revision)

    def make() -> Built:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return build(settings, request, fd, ceph)
        finally:
            os.close(fd)

    return settle(store, request, make)
