"""The image stores, and the one way an image gets into one and onto its record.

An image lives in the local store as the raw file `local_image_path(image_dir, uuid)`, read-only
(VM disks are qcow2 overlays on it), or in the Ceph image pool as the RBD image `<pool>/<uuid>` with
its protected snapshot `base` (VM disks are clones of it).

Image-scanner (a user's uploaded file) and `ucloud-vm import-image` (an admin's file) both make
images with `build` and record what came of it with `settle`, so both apply the same checks and
write the image record the same way. `build` judges the file's header and size first (a file too
large for `image_max_size`, or for what is left of its owner's quota `image_bytes`, is refused before it
is read through), copies it into a private staging file (from then on nobody can change what is
checked), compares its sha512 with what file-scan registered (for an upload), judges the copy
(`diskformat.judge`), lets qemu-img check it too, with an explicit format and under limits, reads a
qcow2's tables (`qcow2tables`: nothing beyond the end of the file, no cluster used twice, no more
data than `image_max_expansion` times the file), converts it to raw, and only then puts it in the
store — or raises, leaving nothing of the file behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError, CephUnavailable
from ucloud_common.config import Settings
from ucloud_common.diskformat import HEADER_BYTES, QCOW2_MAGIC, Refused, Verdict, judge
from ucloud_common.errors import PermanentError, TemporaryError, classify
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.imagecopy import copy_hashed, copy_sparse, sha512_of
from ucloud_common.qcow2tables import check_tables
from ucloud_common.qemuimg import Limits, QemuImgError, qemu_img
from ucloud_common.quota import change, transact_counted
from ucloud_common.record import check_key_part
from ucloud_common.store import Conflict, NotFound, Put, Store

log = logging.getLogger(__name__)

LOCAL = "local"


def local_image_path(image_dir: Path, uuid: str) -> Path:
    """The file of image `uuid` in the local store under `image_dir`: the only place that path is made."""
    return image_dir / f"{check_key_part(uuid)}.raw"


def served_pool(settings: Settings, store_name: str, ceph: Ceph | None) -> str | None:
    """The Ceph pool that serves image store `store_name`, None for the local store; PermanentError
    if neither serves it here."""
    if store_name == LOCAL:
        return None
    if ceph is not None and store_name == settings.ceph_image_pool:
        return store_name
    raise PermanentError(f"image store {store_name} is not served here: it is {LOCAL} or the Ceph image pool "
                         f"({settings.ceph_image_pool}, with UCLOUD_CEPH_CONF set)")


@dataclass(frozen=True)
class Outcome:
    """What came of one image: CREATED; ERROR with `reason`; or still TO_BE_CREATED with `reason`
    when the failure was temporary and the image is left for the next run."""

    status: ImageStatus
    reason: str = ""


def build(settings: Settings, image: Image, source_fd: int, ceph: Ceph | None = None,
          sha512: str | None = None, room: int | None = None) -> int:
    """Make `image` in its store (`image.store_name`, see `served_pool`) from the open file
    `source_fd` (left open) and return its virtual size; with `sha512`, the file must still be the
    one file-scan registered; with `room`, its virtual size must be at most that many bytes.

    Raises PermanentError (the file is `Refused`, the store is not served here, Ceph refused),
    TemporaryError (`CephUnavailable`), or anything unexpected (e.g. OSError); whatever it raises,
    nothing of the file is left in the store or in staging.
    """
    pool = served_pool(settings, image.store_name, ceph)
    _judge(settings, os.pread(source_fd, HEADER_BYTES, 0), os.fstat(source_fd).st_size, room)  # before reading it all
    staging = settings.image_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = staging / f"{check_key_part(image.uuid)}.in"
    converted = staging / f"{image.uuid}.out"
    for leftover in (staged, converted):
        leftover.unlink(missing_ok=True)  # of a run that died
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha512")
    try:
        verify_sha512 = _stage(source_fd, staged, sha512, hashing)
        size = _convert(settings, staged, converted, room)
        verify_sha512()  # before anything reaches the store
        if pool is None:
            converted.chmod(0o444)  # the image's snapshot: VM disks are overlays on it and never write it
            os.replace(converted, local_image_path(settings.image_dir, image.uuid))
            return size
        assert ceph is not None  # served_pool names a pool only with a client
        try:
            ceph.store_image(pool, image.uuid, converted)  # snapshot `base`, protected
        except CephUnavailable:
            raise  # temporary: built again on the next run
        except CephError as exc:
            raise PermanentError(str(exc)) from None
        return size
    finally:
        hashing.shutdown(wait=True)
        for leftover in (staged, converted):
            leftover.unlink(missing_ok=True)


def settle(store: Store, image: Image, make: Callable[[], int]) -> Outcome:
    """Run `make` (which builds `image` and returns its virtual size, e.g. with `build`) and record
    what came of it on the image's record: CREATED with its size, or ERROR with the reason of a permanent or unexpected failure, written by one
    compare-and-swap and only while the record still asks for the image (TO_BE_CREATED). A temporary
    failure writes nothing: the image stays TO_BE_CREATED for the next run.

    Never raises what `make` raises (an unexpected exception is logged with its traceback), so one
    image never stops the others. Raises StoreUnavailable if the record cannot be written; building
    again later is safe (`build` replaces a half-stored image).
    """
    size = 0
    try:
        size = make()
        outcome = Outcome(ImageStatus.CREATED)
    except Exception as exc:  # whatever one image does, the next one is still made
        failure = classify(exc)
        if failure is not exc:
            log.error("image %s failed unexpectedly", image.uuid, exc_info=exc)
        status = ImageStatus.TO_BE_CREATED if isinstance(failure, TemporaryError) else ImageStatus.ERROR
        outcome = Outcome(status, failure.reason)
    what = f"image {image.uuid} ({image.name} of {image.owner})"
    if outcome.status is ImageStatus.TO_BE_CREATED:
        log.warning("%s left for the next run: %s", what, outcome.reason)
        return outcome
    def recorded() -> tuple[list[Put[Image]], dict[str, float]] | None:
        current = store.get(IMAGES, image.uuid)
        if current is None:
            raise NotFound(IMAGES.key(image.uuid))
        if current.value.status is not ImageStatus.TO_BE_CREATED:
            return None
        new = current.value.evolve(status=outcome.status, error=outcome.reason, size=size)
        return [Put(IMAGES, image.uuid, new, current.mod_revision)], change(current.value, new)

    try:
        # Counted, not refused: `make` was given only the room left of the owner's quota, and only
        # image-scanner (one run at a time) and an admin's import grow images' bytes.
        transact_counted(store, image.owner, recorded, enforce=False)
    except NotFound:
        log.warning("%s was deleted while it was made; it stays in its store as %s", what, outcome.status)
        return outcome
    except Conflict as exc:
        log.warning("%s left for the next run: %s", what, exc)
        return Outcome(ImageStatus.TO_BE_CREATED, str(exc))
    if outcome.status is ImageStatus.CREATED:
        log.info("%s created", what)
    else:
        log.warning("%s refused: %s", what, outcome.reason)
    return outcome


def _stage(source_fd: int, staged: Path, sha512: str | None, pool: ThreadPoolExecutor) -> Callable[[], None]:
    """Copy the file to `staged`; return the check that the copy's sha512 is `sha512` (a no-op
    without one). A raw file's is checked at once, before anything looks inside it; a qcow2 must be
    converted anyway, so it is copied quickly and hashed (our own copy, which the user cannot touch)
    while qemu-img checks and converts it."""
    if sha512 is None:
        copy_sparse(source_fd, staged)
        return lambda: None
    if os.pread(source_fd, len(QCOW2_MAGIC), 0) != QCOW2_MAGIC:
        _same_sha512(copy_hashed(source_fd, staged), sha512)
        return lambda: None
    copy_sparse(source_fd, staged)
    hashing = pool.submit(sha512_of, staged)
    return lambda: _same_sha512(hashing.result(), sha512)


def _same_sha512(actual: str, registered: str) -> None:
    if actual != registered:
        raise Refused("the file changed since file-scan registered it (its sha512 differs)")


def _judge(settings: Settings, header: bytes, file_size: int, room: int | None) -> Verdict:
    """`diskformat.judge`, and the image must fit in `room` bytes (what is left of its owner's quota)."""
    verdict = judge(header, file_size, settings.image_max_size * 2**30)
    if room is not None and verdict.virtual_size > room:
        raise Refused(f"virtual size {verdict.virtual_size / 2**30:.1f} GiB is more than the {room / 2**30:.1f} GiB "
                      "left of the owner's quota image_bytes: delete an image first, or ask an admin for a larger "
                      "quota")
    return verdict


def _convert(settings: Settings, staged: Path, converted: Path, room: int | None) -> int:
    """Judge the staged file, let qemu-img check it, read a qcow2's tables, and write it as raw to
    `converted`; return its virtual size, or raise Refused."""
    with open(staged, "rb") as head:
        size = os.fstat(head.fileno()).st_size
        verdict = _judge(settings, head.read(HEADER_BYTES), size, room)
    limits = Limits(settings.qemu_img_memory, settings.qemu_img_cpu)
    info = json.loads(_untrusted_qemu_img(limits, "info", "-f", verdict.format, "--output=json", str(staged)))
    if info.get("backing-filename") or (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise Refused("qemu-img sees a backing or data file that the header check missed")
    if verdict.format == "raw":
        os.replace(staged, converted)  # raw is stored as it is: the staged copy is the image
        return verdict.virtual_size
    try:
        _untrusted_qemu_img(limits, "check", "-q", "-f", "qcow2", str(staged))
    except Refused:
        # qemu-img convert reads a truncated qcow2 without complaint (zeros): check does not.
        raise Refused("qcow2 is damaged or truncated (qemu-img check found errors)") from None
    assert verdict.qcow2 is not None  # judge describes every qcow2's header
    with open(staged, "rb") as tables:  # what check misses (see qcow2tables), before convert expands it
        check_tables(tables.fileno(), size, verdict.qcow2, settings.image_max_expansion)
    _untrusted_qemu_img(limits, "convert", "-q", "-f", "qcow2", "-O", "raw", str(staged), str(converted))
    return verdict.virtual_size


def _untrusted_qemu_img(limits: Limits, *args: str) -> str:
    """qemu-img on an untrusted file: its failing or hanging (a timeout) refuses the file, for good."""
    try:
        return qemu_img(*args, limits=limits)
    except QemuImgError as exc:
        raise Refused(f"{exc} (the file is refused)") from None
