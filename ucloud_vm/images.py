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
from ucloud_common.errors import PermanentError
from ucloud_common.quota import change, transact_counted
from ucloud_common.store import Put, Store


def import_image(store: Store, settings: Settings, path: Path, request: Image, ceph: Ceph | None = None) -> Outcome:
    """Make `request` (a TO_BE_CREATED image) from the file at `path`, replacing any image of the
    same uuid. Raises PermanentError, before writing anything, if its store is not served here
    (`served_pool`) or the uuid is another owner's image, and StoreUnavailable if etcd cannot be reached."""
    served_pool(settings, request.store_name, ceph)

    def requested() -> tuple[list[Put[Image]], dict[str, float]]:
        current = store.get(IMAGES, request.uuid)
        if current is not None and current.value.owner != request.owner:
            raise PermanentError(f"image {request.uuid} is {current.value.owner}'s: delete it first, or import "
                                 "under another uuid")
        return ([Put(IMAGES, request.uuid, request, current.mod_revision if current else 0)],
                change(current.value if current else None, request))

    # An admin's import is counted in the owner's usage, not refused by their quota.
    transact_counted(store, request.owner, requested, enforce=False)

    def make() -> Built:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return build(settings, request, fd, ceph)
        finally:
            os.close(fd)

    return settle(store, request, make)
