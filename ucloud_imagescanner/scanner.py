"""Image-scanner: turn each requested image (TO_BE_CREATED) into a raw image in its store.

For each request: open the user's file without following any link (every path component, since
the user owns the folders), and make the image from it with `imagestore.build`, which checks that
the file is still the one file-scan registered, judges it, converts it and stores it; then
`imagestore.settle` marks the image CREATED, or ERROR with the reason, or leaves it for the next run
after a temporary failure. One image's failure, of any kind, never stops the others.

Each user's images add up to at most their quota `image_bytes` of virtual size (`ucloud_common.quota`):
one that would pass it is refused before its file is read, and one made is counted in its owner's
usage in the transaction that marks it CREATED. Runs never overlap (a lock), so the room this run
reads is not taken by another.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.config import Settings
from ucloud_common.diskformat import Refused
from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGE_DELETIONS, IMAGES, Image, ImageStatus
from ucloud_common.imagestore import Built, build, settle
from ucloud_common.quota import room
from ucloud_common.quoting import quote
from ucloud_common.store import Store

log = logging.getLogger(__name__)


@dataclass
class Report:
    created: int = 0
    refused: int = 0
    waiting: int = 0
    retrying: int = 0
    removed: int = 0  # RBD images of deleted images removed
    removing: int = 0  # … left for a later run (clones still on them, Ceph failed)

    def figures(self) -> dict[str, float]:
        return {f"images_{name}": count for name, count in vars(self).items()}

    def sentence(self) -> str:
        return (f"{self.created} images created, {self.refused} refused, {self.waiting} waiting for their file, "
                f"{self.retrying} left for the next run; {self.removed} deleted images removed from Ceph, "
                f"{self.removing} waiting")


def open_beneath(base: Path, relative: str) -> int:
    """Open base/relative for reading, refusing any symlink on the way and anything but a regular
    file at the end. Returns the fd."""
    parts = Path(relative).parts
    if not parts or any(p in ("", ".", "..") or "/" in p for p in parts) or Path(relative).is_absolute():
        raise Refused(f"file name {quote(relative)} is not a plain relative path")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        raise Refused(f"cannot open the file safely: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise Refused("the file is not a regular file")
    return leaf


def create_image(settings: Settings, image: Image, file: File, ceph: Ceph | None = None,
                 room: int | None = None) -> Built:
    """Make the image from the user's file, at most `room` bytes large (see `imagestore.build`,
    which says what it returns and raises)."""
    if file.refused:  # file-scan found it too large and never read it
        raise Refused(file.refused)
    fd = open_beneath(settings.upload_dir / file.owner, file.filename)
    try:
        return build(settings, image, fd, ceph, registered=file, room=room)
    finally:
        os.close(fd)


def scan(store: Store, settings: Settings, ceph: Ceph | None = None) -> Report:
    report = Report()
    files = store.list(FILES).items
    images = [item.value for item in store.list(IMAGES).items.values()]
    for image in images:
        if image.status is not ImageStatus.TO_BE_CREATED:
            continue
        file = files.get(image.file_uuid)
        if file is None or file.value.owner != image.owner:
            log.info("image %s waits: its file %s is not registered", image.uuid, image.file_uuid)
            report.waiting += 1
            continue

        def make(image: Image = image, file: File = file.value) -> Built:
            return create_image(settings, image, file, ceph, room=room(store, image.owner, "image_bytes"))

        outcome = settle(store, image, make)
        if outcome.status is ImageStatus.CREATED:
            report.created += 1
        elif outcome.status is ImageStatus.ERROR:
            report.refused += 1
        else:
            report.retrying += 1
    if ceph is not None:
        remove_deleted(store, settings, ceph, report)
    return report


def remove_deleted(store: Store, settings: Settings, ceph: Ceph, report: Report) -> None:
    """Remove the RBD image and snapshot of each image deleted through the API (`IMAGE_DELETIONS`),
    then its deletion's record. An image that still has clones waits for them to go, run after run:
    the API refuses to delete an image a VM is made from, so a clone left is a VM disk whose
    deletion is under way (its agent removes it); flattening it instead would copy the whole image
    into that disk only to delete it."""
    for uuid, deletion in store.list(IMAGE_DELETIONS).items.items():
        pool = deletion.value.store_name
        if pool != settings.ceph_image_pool:
            log.warning("deleted image %s was in pool %s, which this image-scanner does not serve (%s): left",
                        uuid, quote(pool), settings.ceph_image_pool)
            report.removing += 1
            continue
        try:
            clones = ceph.clones(pool, uuid)
            if clones:
                log.info("deleted image %s stays in %s while it has clones: %s", uuid, pool, ", ".join(clones[:5]))
                report.removing += 1
                continue
            ceph.remove_image(pool, uuid)
        except CephError as exc:  # temporary or not, the next run tries again; nothing is half removed
            log.warning("deleted image %s not removed from %s yet: %s", uuid, pool, exc)
            report.removing += 1
            continue
        store.delete(IMAGE_DELETIONS, uuid)  # written once, by the API: nothing to compare

        log.info("deleted image %s removed from %s with its snapshot", uuid, pool)
        report.removed += 1
