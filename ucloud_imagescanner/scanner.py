"""Image-scanner: turn each requested image (TO_BE_CREATED) into a raw image in its store.

For each request: open the user's file without following any link (every path component, since
the user owns the folders), copy it into a private staging file (from then on, the user can change
nothing of what is inspected and converted), compare its sha512 with what file-scan registered
(computed beside the copy for raw, beside qemu-img's work for qcow2, always before anything reaches
the store), judge the header (`inspect.judge`), let qemu-img check it too, with an
explicit format and under limits, convert to raw, make the result read-only (the image's snapshot;
an RBD store will snapshot and protect), and mark the image CREATED — or ERROR with the reason,
leaving nothing of a refused file in the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.config import Settings
from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.store import Store
from ucloud_common.diskformat import HEADER_BYTES, QCOW2_MAGIC, Refused, judge
from ucloud_common.qemuimg import Limits, QemuImgError, qemu_img

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
ZEROS = bytes(CHUNK)


@dataclass
class Report:
    created: int = 0
    refused: int = 0
    waiting: int = 0

    def sentence(self) -> str:
        return f"{self.created} images created, {self.refused} refused, {self.waiting} waiting for their file"


def open_beneath(base: Path, relative: str) -> int:
    """Open base/relative for reading, refusing any symlink on the way and anything but a regular
    file at the end. Returns the fd."""
    parts = Path(relative).parts
    if not parts or any(p in ("", ".", "..") or "/" in p for p in parts) or Path(relative).is_absolute():
        raise Refused(f"file name {relative!r} is not a plain relative path")
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


def stage(source_fd: int, target: Path) -> str:
    """Copy the open file to `target` (created 0600, never existing before), keeping holes; return
    its sha512, computed in a second thread beside the copy (hashlib releases the GIL)."""
    digest = hashlib.sha512()
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def hash_all() -> None:
        while (chunk := chunks.get()) is not None:
            digest.update(chunk)

    hasher = threading.Thread(target=hash_all)
    hasher.start()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(source_fd, "rb", closefd=False) as src, os.fdopen(out, "wb") as dst:
            while chunk := src.read(CHUNK):
                chunks.put(chunk)
                if len(chunk) == CHUNK and chunk == ZEROS:
                    dst.seek(CHUNK, os.SEEK_CUR)  # keep holes: disk images are mostly zeros
                else:
                    dst.write(chunk)
            dst.truncate()
    finally:
        chunks.put(None)
        hasher.join()
    return digest.hexdigest()


def copy_sparse(source_fd: int, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(source_fd, "rb", closefd=False) as src, os.fdopen(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            if len(chunk) == CHUNK and chunk == ZEROS:
                dst.seek(CHUNK, os.SEEK_CUR)
            else:
                dst.write(chunk)
        dst.truncate()


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def untrusted_qemu_img(settings: Settings, *args: str) -> str:
    try:
        return qemu_img(*args, limits=Limits(settings.qemu_img_memory, settings.qemu_img_cpu))
    except QemuImgError as exc:
        raise Refused(f"{exc} (the file is refused)") from None


def create_image(settings: Settings, image: Image, file: File, store_dir: Path, ceph: Ceph | None = None) -> None:
    """Make the image from its file — `store_dir/<uuid>.raw`, or with `ceph` the RBD image
    `<store>/<uuid>@base` — or raise Refused; nothing is left behind in the store on failure."""
    staging_dir = store_dir / ".staging"
    staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = staging_dir / f"{image.uuid}.in"
    converted = staging_dir / f"{image.uuid}.raw"
    for leftover in (staged, converted):
        leftover.unlink(missing_ok=True)
    hashing: Future[str] | None = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha512")
    try:
        fd = open_beneath(settings.upload_dir / file.owner, file.filename)
        try:
            if os.pread(fd, len(QCOW2_MAGIC), 0) == QCOW2_MAGIC:
                # A qcow2 must be converted anyway: copy it quickly, then verify its sha512 (of our
                # own copy, which the user cannot touch) while qemu-img checks and converts it.
                copy_sparse(fd, staged)
                hashing = pool.submit(sha512_of, staged)
            else:
                hashing = pool.submit(stage, fd, staged)
                hashing.result()
        finally:
            os.close(fd)

        def verify_sha512() -> None:
            assert hashing is not None
            if hashing.result() != file.sha512:
                raise Refused("the file changed since file-scan registered it (its sha512 differs)")

        if hashing.done():  # a raw file's sha512 is known already: verify it before looking inside
            verify_sha512()
        with open(staged, "rb") as head:
            verdict = judge(head.read(HEADER_BYTES), staged.stat().st_size, settings.image_max_size * 2**30)
        info = json.loads(untrusted_qemu_img(settings, "info", "-f", verdict.format, "--output=json", str(staged)))
        if info.get("backing-filename") or (info.get("format-specific") or {}).get("data", {}).get("data-file"):
            raise Refused("qemu-img sees a backing or data file that the header check missed")
        if verdict.format == "qcow2":
            try:
                untrusted_qemu_img(settings, "check", "-q", "-f", "qcow2", str(staged))
            except Refused:
                # qemu-img convert reads a truncated qcow2 without complaint (zeros): check does not.
                raise Refused("qcow2 is damaged or truncated (qemu-img check found errors)") from None
        if verdict.format == "raw":
            os.replace(staged, converted)  # raw is stored as it is: the staged copy is the image
        else:
            untrusted_qemu_img(settings, "convert", "-q", "-f", verdict.format, "-O", "raw", str(staged), str(converted))
        verify_sha512()  # before anything reaches the store
        if ceph is not None:
            try:
                ceph.store_image(image.store_name, image.uuid, converted)  # snapshot `base`, protected
            except CephError as exc:
                raise Refused(str(exc)) from None
            return
        converted.chmod(0o444)  # the image's snapshot: VM disks are overlays on it and never write it
        os.replace(converted, store_dir / f"{image.uuid}.raw")
    finally:
        pool.shutdown(wait=True)
        for leftover in (staged, converted):
            leftover.unlink(missing_ok=True)


def scan(store: Store, settings: Settings, ceph: Ceph | None = None) -> Report:
    report = Report()
    files = store.list(FILES).items
    for item in store.list(IMAGES).items.values():
        image = item.value
        if image.status is not ImageStatus.TO_BE_CREATED:
            continue
        file = files.get(image.file_uuid)
        if file is None or file.value.owner != image.owner:
            log.info("image %s waits: its file %s is not registered", image.uuid, image.file_uuid)
            report.waiting += 1
            continue
        rbd_store = ceph is not None and image.store_name == settings.ceph_image_pool
        if image.store_name != "local" and not rbd_store:
            status, error = ImageStatus.ERROR, f"image store {image.store_name} is not served by this image-scanner"
        else:
            try:
                create_image(settings, image, file.value, settings.image_dir, ceph if rbd_store else None)
                status, error = ImageStatus.CREATED, ""
            except Refused as exc:
                status, error = ImageStatus.ERROR, str(exc)
        store.update(IMAGES, image.uuid, lambda current: current.evolve(status=status, error=error)
                     if current.status is ImageStatus.TO_BE_CREATED else None)
        if status is ImageStatus.CREATED:
            log.info("image %s (%s of %s) created", image.uuid, image.name, image.owner)
            report.created += 1
        else:
            log.warning("image %s (%s of %s) refused: %s", image.uuid, image.name, image.owner, error)
            report.refused += 1
    return report
