"""The image stores, and the one way an image gets into one and onto its record.

An image lives in the local store as the raw file `local_image_path(image_dir, uuid)`, read-only
(VM disks are qcow2 overlays on it), or in the Ceph image pool as the RBD image `<pool>/<uuid>` with
its protected snapshot `base` (VM disks are clones of it).

Image-scanner (a user's uploaded file) and `ucloud-vm import-image` (an admin's file) both make
images with `build` and record what came of it with `settle`, so both apply the same checks and
write the image record the same way. `build` judges the file's header and size first (a file too
large for `image_max_size`, or for what is left of its owner's quota `image_bytes`, is refused before it
is read through), copies it into a private staging file (from then on nobody can change what is
checked) while computing its content digest (`contentdigest`), compares it with what file-scan
registered (for an upload: the file is the one it read), judges the copy
(`diskformat.judge`), lets qemu-img check a qcow2 too, with an explicit format and under limits, reads its
tables (`qcow2tables`: nothing beyond the end of the file, no cluster used twice, no more
data than `image_max_expansion` times the file), converts it to raw, and only then puts it in the
store — or raises, leaving nothing of the file behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.ceph import Ceph, CephError, CephUnavailable
from ucloud_common.config import Settings
from ucloud_common.contentdigest import digest_of
from ucloud_common.diskformat import HEADER_BYTES, Refused, Verdict, judge
from ucloud_common.errors import PermanentError, TemporaryError, classify
from ucloud_common.file import File
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.imagecopy import copy_sparse, sha512_of
from ucloud_common.qcow2tables import check_tables
from ucloud_common.qemuimg import Limits, QemuImgError, qemu_img
from ucloud_common.quota import change, transact_counted
from ucloud_common.record import check_key_part, is_key_part
from ucloud_common.store import Conflict, NotFound, Put, Store

log = logging.getLogger(__name__)

LOCAL = "local"


def local_image_path(image_dir: Path, uuid: str) -> Path:
    """The file of image `uuid` in the local store under `image_dir`: the only place that path is made."""
    return image_dir / f"{check_key_part(uuid)}.raw"


def local_images(image_dir: Path) -> tuple[str, ...]:
    """The uuids of the images in the local store under `image_dir`, sorted (what a host reports)."""
    try:
        names = os.listdir(image_dir)
    except FileNotFoundError:
        return ()
    return tuple(sorted(name[:-4] for name in names
                        if name.endswith(".raw") and is_key_part(name[:-4]) and (image_dir / name).is_file()))


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
class Built:
    """An image made in its store: its virtual size, and the content digest of its raw file in the local
    store ("" in Ceph, where no host copies it from another)."""

    size: int
    digest: str = ""


@dataclass(frozen=True)
class Outcome:
    """What came of one image: CREATED; ERROR with `reason`; or still TO_BE_CREATED with `reason`
    when the failure was temporary and the image is left for the next run."""

    status: ImageStatus
    reason: str = ""


def build(settings: Settings, image: Image, source_fd: int, ceph: Ceph | None = None,
          registered: File | None = None, room: int | None = None) -> Built:
    """Make `image` in its store (`image.store_name`, see `served_pool`) from the open file
    `source_fd` (left open) and say what was built; with `registered`, the file must still be the
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
    try:
        staged_digest = _stage(source_fd, staged, registered)
        verdict = _convert(settings, staged, converted, room)
        size = verdict.virtual_size
        if pool is None:
            converted.chmod(0o444)  # the image's snapshot: VM disks are overlays on it and never write it
            # A raw file is stored as it was staged: its digest is the one just computed.
            digest = staged_digest if verdict.format == "raw" else digest_of(converted)
            os.replace(converted, local_image_path(settings.image_dir, image.uuid))
            return Built(size, digest)
        assert ceph is not None  # served_pool names a pool only with a client
        try:
            ceph.store_image(pool, image.uuid, converted)  # snapshot `base`, protected
        except CephUnavailable:
            raise  # temporary: built again on the next run
        except CephError as exc:
            raise PermanentError(str(exc)) from None
        return Built(size)
    finally:
        for leftover in (staged, converted):
            leftover.unlink(missing_ok=True)


def settle(store: Store, image: Image, make: Callable[[], Built]) -> Outcome:
    """Run `make` (which builds `image`, e.g. with `build`) and record what came of it on the
    image's record: CREATED with its size and digest, or ERROR with the reason of a permanent or unexpected failure, written by one
    compare-and-swap and only while the record still asks for the image (TO_BE_CREATED). A temporary
    failure writes nothing: the image stays TO_BE_CREATED for the next run.

    Never raises what `make` raises (an unexpected exception is logged with its traceback), so one
    image never stops the others. Raises StoreUnavailable if the record cannot be written; building
    again later is safe (`build` replaces a half-stored image).
    """
    built = Built(0)
    try:
        built = make()
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
        new = current.value.evolve(status=outcome.status, error=outcome.reason, size=built.size, digest=built.digest)
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


def _stage(source_fd: int, staged: Path, registered: File | None) -> str:
    """Copy the file to `staged`, computing the content digest of what is copied on the other core
    meanwhile, and return it once it is the digest file-scan registered (`Refused` otherwise): from
    then on the copy is ours, the user can change nothing of what is looked at. A file registered
    before digests were kept is checked by its sha512 instead: one more pass over the copy."""
    digest = copy_sparse(source_fd, staged)
    if registered is not None:
        if registered.digest:
            _same(digest, registered.digest, "digest")
        else:
            _same(sha512_of(staged), registered.sha512, "sha512")
    return digest


def _same(actual: str, registered: str, what: str) -> None:
    if actual != registered:
        raise Refused(f"the file changed since file-scan registered it (its {what} differs)")


def _judge(settings: Settings, header: bytes, file_size: int, room: int | None) -> Verdict:
    """`diskformat.judge`, and the image must fit in `room` bytes (what is left of its owner's quota)."""
    verdict = judge(header, file_size, settings.image_max_size * 2**30)
    if room is not None and verdict.virtual_size > room:
        raise Refused(f"virtual size {verdict.virtual_size / 2**30:.1f} GiB is more than the {room / 2**30:.1f} GiB "
                      "left of the owner's quota image_bytes: delete an image first, or ask an admin for a larger "
                      "quota")
    return verdict


def _convert(settings: Settings, staged: Path, converted: Path, room: int | None) -> Verdict:
    """Judge the staged file; a raw one is moved to `converted` as it is; a qcow2 is checked by qemu-img,
    its tables read, and written as raw to `converted`. Return the verdict, or raise Refused."""
    with open(staged, "rb") as head:
        size = os.fstat(head.fileno()).st_size
        verdict = _judge(settings, head.read(HEADER_BYTES), size, room)
    if verdict.format == "raw":
        # Stored as it is: the staged copy is the image. Read as raw (never probed), a file has no backing
        # or data file for `qemu-img info` to see; asking it cost a process, 10-15 ms of the 0.3 s of
        # a 1 GiB image (tests/bench/storage.py).
        os.replace(staged, converted)
        return verdict
    limits = Limits(settings.qemu_img_memory, settings.qemu_img_cpu)
    info = json.loads(_untrusted_qemu_img(limits, "info", "-f", "qcow2", "--output=json", str(staged)))
    if info.get("backing-filename") or (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise Refused("qemu-img sees a backing or data file that the header check missed")
    try:
        _untrusted_qemu_img(limits, "check", "-q", "-f", "qcow2", str(staged))
    except Refused:
        # qemu-img convert reads a truncated qcow2 without complaint (zeros): check does not.
        raise Refused("qcow2 is damaged or truncated (qemu-img check found errors)") from None
    assert verdict.qcow2 is not None  # judge describes every qcow2's header
    with open(staged, "rb") as tables:  # what check misses (see qcow2tables), before convert expands it
        check_tables(tables.fileno(), size, verdict.qcow2, settings.image_max_expansion)
    _untrusted_qemu_img(limits, "convert", "-q", "-f", "qcow2", "-O", "raw", str(staged), str(converted))
    return verdict


def _untrusted_qemu_img(limits: Limits, *args: str) -> str:
    """qemu-img on an untrusted file: its failing or hanging (a timeout) refuses the file, for good."""
    try:
        return qemu_img(*args, limits=limits)
    except QemuImgError as exc:
        raise Refused(f"{exc} (the file is refused)") from None
