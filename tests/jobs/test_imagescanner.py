"""Image-scanner over good and hostile files, with a real etcd, real qemu-img and file-scan; its error
paths (an unexpected exception, a hung qemu-img, Ceph failing) injected with mocks."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.metrics import parse, value
from tests.helpers.tiny import tiny_image
from tests.unit.test_contentdigest import by_hand
from ucloud_common.cli import run_periodic_job
from ucloud_common import qemuimg
from ucloud_common.ceph import CephError, CephUnavailable
from ucloud_common.config import Settings
from ucloud_common.file import FILES
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common import imagestore
from ucloud_common.imagestore import local_image_path
from ucloud_common.logs import PrintableFormatter
from ucloud_common.quota import QUOTAS, USAGES, Quota
from ucloud_common.store import Store
from ucloud_common.user import USERS, User
from ucloud_filescan.scan import scan as filescan
from ucloud_common.diskformat import Refused, judge
from ucloud_imagescanner import scanner
from ucloud_imagescanner.scanner import scan

PASSWD = Path("/etc/passwd").read_bytes()


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def with_data_file_named(path: Path, name: bytes) -> None:
    """Point a qcow2's external-data-file header extension at `name` (qemu-img create would open
    and resize the data file, so /etc/passwd is written in by hand)."""
    data = bytearray(path.read_bytes())
    header_length = struct.unpack(">I", data[100:104])[0]
    offset = header_length
    while True:
        kind, length = struct.unpack(">II", data[offset:offset + 8])
        assert kind != 0, "no data file extension"
        if kind == 0x44415441:
            padded = (len(name) + 7) // 8 * 8
            rest_start = offset + 8 + (length + 7) // 8 * 8
            rest = data[rest_start:rest_start + 4096]
            data[offset:offset + 8 + padded + len(rest)] = (struct.pack(">II", kind, len(name)) + name.ljust(padded, b"\0")
                                                           + rest)
            break
        offset += 8 + (length + 7) // 8 * 8
    path.write_bytes(bytes(data))


@pytest.fixture
def settings_for(settings: Settings, tmp_path: Path, store: Store) -> Settings:
    store.create(USERS, "alice", User(name="alice"))  # file-scan looks only at the folders of users
    return settings.model_copy(update={"upload_dir": tmp_path / "www", "image_dir": tmp_path / "images",
                                       "lock_dir": tmp_path / "lock"})


@pytest.fixture
def uploads(settings_for: Settings, tmp_path: Path) -> dict[str, Path]:
    tiny = tiny_image()
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    files = {name: folder / name for name in ("good.qcow2", "good.raw", "backing.qcow2", "datafile.qcow2",
                                              "truncated.qcow2", "disguised.img", "huge.qcow2")}
    files["good.qcow2"].write_bytes((tiny / "tiny.qcow2").read_bytes())
    files["good.raw"].write_bytes((tiny / "tiny.raw").read_bytes())
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(files["backing.qcow2"]))
    scratch = tmp_path / "scratch.raw"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={scratch}", str(files["datafile.qcow2"]), "1M")
    with_data_file_named(files["datafile.qcow2"], b"/etc/passwd")
    whole = (tiny / "tiny.qcow2").read_bytes()
    files["truncated.qcow2"].write_bytes(whole[: len(whole) // 2])
    qemu_img("create", "-f", "vmdk", str(files["disguised.img"]), "1M")
    qemu_img("create", "-f", "qcow2", str(files["huge.qcow2"]), "100T")
    return files


def request(store: Store, owner: str, filename: str, store_name: str = "local") -> str:
    file = next(f.value for f in store.list(FILES).items.values() if f.value.filename == filename)
    uuid = filename.replace(".", "-")
    store.create(IMAGES, uuid, Image(uuid=uuid, owner=owner, name=uuid, store_name=store_name, file_uuid=file.uuid))
    return uuid


def test_good_images_are_created_and_hostile_ones_refused(store: Store, settings_for: Settings,
                                                          uploads: dict[str, Path]) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    images = {name: request(store, "alice", name) for name in uploads}
    report = scan(store, settings_for)
    result = {name: store.get(IMAGES, uuid).value for name, uuid in images.items()}  # type: ignore[union-attr]
    assert result["good.qcow2"].status is ImageStatus.CREATED
    assert result["good.raw"].status is ImageStatus.CREATED
    expected = {
        "backing.qcow2": "qcow2 with a backing file (/etc/passwd) is not accepted",
        "datafile.qcow2": "qcow2 with an external data file is not accepted",
        "truncated.qcow2": "qcow2 is damaged or truncated (qemu-img check found errors)",
        "disguised.img": "format vmdk is not accepted (only raw and qcow2)",
        "huge.qcow2": "virtual size 102400.0 GiB exceeds the limit of 256 GiB",
    }
    for name, error in expected.items():
        assert result[name].status is ImageStatus.ERROR and result[name].error == error, (name, result[name].error)
    assert report.created == 2 and report.refused == 5
    stored = sorted(p.name for p in settings_for.image_dir.iterdir() if p.is_file())
    assert stored == sorted(local_image_path(settings_for.image_dir, images[n]).name for n in ("good.qcow2", "good.raw"))
    assert not list((settings_for.image_dir / ".staging").iterdir()), "nothing of a refused file is left"
    for path in settings_for.image_dir.rglob("*"):
        if path.is_file():
            assert PASSWD[:64] not in path.read_bytes(), f"/etc/passwd leaked into {path}"
    converted = local_image_path(settings_for.image_dir, images["good.qcow2"]).read_bytes()
    assert converted == (tiny_image() / "tiny.raw").read_bytes()
    assert local_image_path(settings_for.image_dir, images["good.raw"]).stat().st_mode & 0o222 == 0, "not read-only"
    again = scan(store, settings_for)
    assert again.created == again.refused == 0, "a second run redoes nothing"


def test_a_local_image_records_the_digest_of_its_raw_file(store: Store, settings_for: Settings,
                                                          uploads: dict[str, Path]) -> None:
    """What a host fetching the image from another checks the transfer against (ucloud_vm.peerimages);
    for a raw upload, the digest file-scan recorded (the file is stored as it is)."""
    filescan(store, settings_for.upload_dir, settle=0)
    uuids = [request(store, "alice", name) for name in ("good.qcow2", "good.raw")]
    scan(store, settings_for)
    raw = (tiny_image() / "tiny.raw").read_bytes()
    for uuid in uuids:
        image = store.get(IMAGES, uuid)
        assert image is not None and image.value.status is ImageStatus.CREATED
        assert image.value.digest == by_hand(raw) and image.value.size == len(raw)
    registered = {f.value.filename: f.value for f in store.list(FILES).items.values()}
    assert registered["good.raw"].digest == by_hand(raw)
    assert registered["good.qcow2"].digest == by_hand(uploads["good.qcow2"].read_bytes())


def test_the_copy_is_checked_by_its_digest_or_the_sha512_of_a_file_registered_before_digests(
        store: Store, settings_for: Settings, uploads: dict[str, Path]) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    files = {f.value.filename: f for f in store.list(FILES).items.values()}
    # good.raw: the digest says another content (the sha512 still says this one): refused by its digest.
    store.replace(FILES, files["good.raw"].name, files["good.raw"].value.evolve(digest="0" * 64),
                  files["good.raw"].mod_revision)
    # good.qcow2: registered before digests were kept, and changed since: refused by its sha512.
    store.replace(FILES, files["good.qcow2"].name, files["good.qcow2"].value.evolve(digest=""),
                  files["good.qcow2"].mod_revision)
    with open(uploads["good.qcow2"], "ab") as file:
        file.write(b"\0" * 512)
    by_digest, by_sha512 = request(store, "alice", "good.raw"), request(store, "alice", "good.qcow2")
    scan(store, settings_for)
    changed = "the file changed since file-scan registered it"
    assert status_of(store, by_digest) == (ImageStatus.ERROR, f"{changed} (its digest differs)")
    assert status_of(store, by_sha512) == (ImageStatus.ERROR, f"{changed} (its sha512 differs)")


def test_a_file_changed_after_registration_is_refused(store: Store, settings_for: Settings,
                                                     uploads: dict[str, Path]) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "good.raw")
    with open(uploads["good.raw"], "r+b") as file:
        file.write(b"tampered")
    scan(store, settings_for)
    image = store.get(IMAGES, uuid)
    assert image is not None and image.value.status is ImageStatus.ERROR
    assert "changed since file-scan registered it" in image.value.error


def test_a_qcow2_changed_after_registration_is_refused(store: Store, settings_for: Settings,
                                                       uploads: dict[str, Path]) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "good.qcow2")
    with open(uploads["good.qcow2"], "ab") as file:
        file.write(b"\0" * 512)
    scan(store, settings_for)
    image = store.get(IMAGES, uuid)
    assert image is not None and image.value.status is ImageStatus.ERROR
    assert "changed since file-scan registered it" in image.value.error
    assert not local_image_path(settings_for.image_dir, uuid).exists(), "nothing reached the store"


def test_a_symlink_swapped_in_after_registration_is_not_followed(store: Store, settings_for: Settings,
                                                                 uploads: dict[str, Path]) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "good.raw")
    uploads["good.raw"].unlink()
    uploads["good.raw"].symlink_to("/etc/passwd")
    scan(store, settings_for)
    image = store.get(IMAGES, uuid)
    assert image is not None and image.value.status is ImageStatus.ERROR
    assert "cannot open the file safely" in image.value.error


def test_an_image_waits_for_its_file(store: Store, settings_for: Settings) -> None:
    store.create(IMAGES, "early", Image(uuid="early", owner="alice", name="early", store_name="local",
                                        file_uuid="not-yet"))
    assert scan(store, settings_for).waiting == 1
    assert store.get(IMAGES, "early").value.status is ImageStatus.TO_BE_CREATED  # type: ignore[union-attr]


def two_good_images(store: Store, settings: Settings) -> dict[str, str]:
    filescan(store, settings.upload_dir, settle=0)
    return {name: request(store, "alice", name) for name in ("good.qcow2", "good.raw")}


def status_of(store: Store, uuid: str) -> tuple[ImageStatus, str]:
    image = store.get(IMAGES, uuid)
    assert image is not None
    return image.value.status, image.value.error


@pytest.mark.parametrize("failure, status, error", [
    (RuntimeError("boom"), ImageStatus.ERROR, "unexpected error: RuntimeError: boom"),
    (OSError(errno.ENOSPC, "No space left on device"), ImageStatus.TO_BE_CREATED, ""),  # temporary: retried
])
def test_one_image_failing_unexpectedly_never_stops_the_others(
        store: Store, settings_for: Settings, uploads: dict[str, Path], mocker, failure: Exception,  # type: ignore[no-untyped-def]
        status: ImageStatus, error: str, caplog: pytest.LogCaptureFixture) -> None:
    """Error path only: `build` is made to fail on one image."""
    images = two_good_images(store, settings_for)
    real = scanner.build

    def failing_on_qcow2(settings: Settings, image: Image, *args: Any, **kwargs: Any) -> int:
        if image.uuid == images["good.qcow2"]:
            raise failure
        return real(settings, image, *args, **kwargs)

    mocker.patch.object(scanner, "build", side_effect=failing_on_qcow2)
    report = scan(store, settings_for)
    assert status_of(store, images["good.qcow2"]) == (status, error)
    assert status_of(store, images["good.raw"]) == (ImageStatus.CREATED, "")
    assert (report.created, report.refused + report.retrying) == (1, 1)
    logged = [r for r in caplog.records if images["good.qcow2"] in r.getMessage()]
    assert logged and all(r.levelname in ("WARNING", "ERROR") for r in logged)
    assert any(r.exc_info for r in logged), "the unexpected failure's traceback is logged"


def test_a_qemu_img_timeout_refuses_that_image_and_the_run_goes_on(
        store: Store, settings_for: Settings, uploads: dict[str, Path], mocker) -> None:  # type: ignore[no-untyped-def]
    """Error path only: qemu-img is made to hang (time out) on one image's staged copy."""
    images = two_good_images(store, settings_for)
    real = subprocess.run

    def hanging_on_qcow2(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if any(arg.endswith(f"{images['good.qcow2']}.in") for arg in command):
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return real(command, **kwargs)

    mocker.patch.object(qemuimg.subprocess, "run", side_effect=hanging_on_qcow2)
    report = scan(store, settings_for)
    wall = settings_for.qemu_img_cpu * 2
    assert status_of(store, images["good.qcow2"]) == (
        ImageStatus.ERROR, f"qemu-img info did not finish within {wall} s (the file is refused)")
    assert status_of(store, images["good.raw"]) == (ImageStatus.CREATED, "")
    assert (report.created, report.refused) == (1, 1)


class CephFailing:
    """A Ceph client whose image store fails with `error` (the error paths of `Ceph.store_image`)."""

    def __init__(self, error: CephError) -> None:
        self.error = error

    def store_image(self, pool: str, name: str, raw: Path) -> None:
        raise self.error


@pytest.mark.parametrize("error, status", [
    (CephUnavailable("cannot store image images/x: RADOS timed out"), ImageStatus.TO_BE_CREATED),
    (CephError("cannot store image images/x: RADOS permission denied"), ImageStatus.ERROR),
])
def test_a_temporary_ceph_error_leaves_the_image_for_the_next_run(
        store: Store, settings_for: Settings, uploads: dict[str, Path], caplog: pytest.LogCaptureFixture,
        error: CephError, status: ImageStatus) -> None:
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "good.qcow2", settings_for.ceph_image_pool)
    report = scan(store, settings_for, CephFailing(error))  # type: ignore[arg-type]
    assert status_of(store, uuid) == (status, "" if status is ImageStatus.TO_BE_CREATED else str(error))
    assert (report.retrying, report.refused) == ((1, 0) if status is ImageStatus.TO_BE_CREATED else (0, 1))
    assert any(r.levelname == "WARNING" and str(error) in r.getMessage() for r in caplog.records)
    assert not list((settings_for.image_dir / ".staging").iterdir()), "nothing left in staging"


@pytest.mark.parametrize("header, why", [
    ((b"QFI\xfb" + struct.pack(">I", 9)).ljust(200, b"\0"), "version 9"),
    (b"QFI\xfb", "truncated qcow2 header"),
    (b"conectix".ljust(200, b"\0"), "format vpc"),
])
def test_headers_judged_by_hand(header: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        judge(header, 10**6, 2**40)
    assert judge(b"\0" * 512, 512, 2**30).format == "raw"



def test_qemu_img_runs_under_its_limits_beside_a_live_etcd_client(store: Store) -> None:
    """The limits used to be set in a preexec_fn, whose plain fork() ran gRPC's fork handlers in the
    child: once in CI their poller wrote an epoll error into qemu-img's stderr and failed a good image."""
    from ucloud_common.qemuimg import Limits, QemuImgError, qemu_img as limited
    image = str(tiny_image() / "tiny.qcow2")
    for _ in range(30):
        store.list(FILES)
        assert '"format": "qcow2"' in limited("info", "-f", "qcow2", "--output=json", image,
                                              limits=Limits(memory_mib=1024, cpu_seconds=30))
    with pytest.raises(QemuImgError):  # and the limits bind: 4 MiB of address space cannot even load it
        limited("info", "-f", "qcow2", image, limits=Limits(memory_mib=4, cpu_seconds=30))


CLUSTER = 65536
OFFSET = 0x00FF_FFFF_FFFF_FE00


def shared_cluster_bomb(path: Path, virtual: int) -> None:
    """A qcow2 whose every L2 entry points at one data cluster of 'A's, that cluster's refcount set
    to match: `qemu-img check` finds nothing wrong, and it converts to `virtual` bytes of data."""
    qemu_img("create", "-f", "qcow2", str(path), str(virtual))
    subprocess.run(["qemu-io", "-c", f"write -P 0x41 0 {CLUSTER}", str(path)], check=True, capture_output=True)
    data = bytearray(path.read_bytes())
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & OFFSET
    shared = struct.unpack(">Q", data[l2:l2 + 8])[0] & ~(1 << 63)  # not COPIED: it has more than one reference
    entries = virtual // CLUSTER
    assert entries <= CLUSTER // 8, "one L2 table"
    data[l2:l2 + 8 * entries] = struct.pack(">Q", shared) * entries
    refcounts = struct.unpack(">Q", data[struct.unpack(">Q", data[48:56])[0]:][:8])[0]
    index = (shared & OFFSET) // CLUSTER
    data[refcounts + 2 * index:refcounts + 2 * index + 2] = struct.pack(">H", entries)
    path.write_bytes(bytes(data))


def written_qcow2(path: Path) -> None:
    qemu_img("create", "-f", "qcow2", str(path), "64M")
    subprocess.run(["qemu-io", "-c", "write -P 0x41 0 1M", str(path)], check=True, capture_output=True)


def test_a_qcow2_sharing_one_cluster_everywhere_is_refused(store: Store, settings_for: Settings) -> None:
    """A 448 KiB qcow2 became 1 GiB of real data in the store (here: 64 MiB from 320 KiB)."""
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    shared_cluster_bomb(folder / "bomb.qcow2", 64 * 2**20)
    qemu_img("check", "-f", "qcow2", str(folder / "bomb.qcow2"))  # what the bomb gets past
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "bomb.qcow2")
    scan(store, settings_for)
    status, error = status_of(store, uuid)
    assert status is ImageStatus.ERROR and error.startswith("qcow2 uses the cluster at offset ") and error.endswith(
        "twice (a data cluster is one use): clusters shared by snapshots or deduplication are not accepted in an upload")
    assert not local_image_path(settings_for.image_dir, uuid).exists()


@pytest.mark.parametrize("cut, why", [
    (3 * CLUSTER, "qcow2 is truncated: the L1 table at offset 196608 lies beyond the end of the file (196608 bytes)"),
    (-CLUSTER // 2, "qcow2 is truncated: a data cluster at offset 1310720 lies beyond the end of the file "
                    "(1343488 bytes)"),
])
def test_a_qcow2_cut_short_where_qemu_img_check_sees_nothing_is_refused(
        store: Store, settings_for: Settings, cut: int, why: str) -> None:
    """Cut to 3 clusters (its L1 table beyond the end), or in its last data cluster, a qcow2 passed
    `qemu-img check` and became an image of zeros."""
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    path = folder / "cut.qcow2"
    written_qcow2(path)
    os.truncate(path, cut if cut > 0 else path.stat().st_size + cut)
    qemu_img("check", "-f", "qcow2", str(path))  # what the cut gets past
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "cut.qcow2")
    scan(store, settings_for)
    assert status_of(store, uuid) == (ImageStatus.ERROR, why)


def test_compressed_data_is_accepted_up_to_its_expansion_limit(store: Store, settings_for: Settings,
                                                               tmp_path: Path) -> None:
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(tiny_image() / "tiny.raw"), str(folder / "tiny-c.qcow2"))
    zeros_and_as = tmp_path / "as.raw"
    zeros_and_as.write_bytes(b"A" * 32 * 2**20)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(zeros_and_as), str(folder / "as.qcow2"))
    filescan(store, settings_for.upload_dir, settle=0)
    compressed, repetitive = request(store, "alice", "tiny-c.qcow2"), request(store, "alice", "as.qcow2")
    scan(store, settings_for)
    assert status_of(store, compressed) == (ImageStatus.CREATED, "")
    status, error = status_of(store, repetitive)
    assert status is ImageStatus.ERROR and error.startswith("qcow2 holds 0.0 GiB of data in a file of ")
    assert error.endswith("more than 10 times its size is not accepted")


def test_a_users_images_stay_within_their_quota(store: Store, settings_for: Settings) -> None:
    """The quota an admin set (PUT /users/alice/quota), counted in alice's usage as each image is made."""
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    for name in ("one.qcow2", "two.qcow2"):
        qemu_img("create", "-f", "qcow2", str(folder / name), "768M")
    filescan(store, settings_for.upload_dir, settle=0)
    images = [request(store, "alice", name) for name in ("one.qcow2", "two.qcow2")]
    store.create(QUOTAS, "alice", Quota(user="alice", image_bytes=2**30))
    report = scan(store, settings_for)
    outcomes = sorted(status_of(store, uuid) for uuid in images)
    assert (report.created, report.refused) == (1, 1)
    assert outcomes[0] == (ImageStatus.CREATED, "")
    assert outcomes[1] == (ImageStatus.ERROR, "virtual size 0.8 GiB is more than the 0.2 GiB left of the owner's "
                                              "quota image_bytes: delete an image first, or ask an admin for a larger "
                                              "quota")
    assert sorted(store.get(IMAGES, uuid).value.size for uuid in images) == [0, 768 * 2**20]  # type: ignore[union-attr]
    assert store.get(USAGES, "alice").value.image_bytes == 768 * 2**20  # type: ignore[union-attr]


def test_a_file_too_large_is_refused_before_it_is_copied(store: Store, settings_for: Settings, mocker) -> None:  # type: ignore[no-untyped-def]
    """Image-scanner copied and hashed an 8 GiB sparse file for 38 s before refusing it for its size
    (here the record says nothing of it: it was registered before the limit was lowered)."""
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    with open(folder / "big.raw", "wb") as file:
        file.truncate(2 * 2**30)
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "big.raw")
    copying = mocker.spy(imagestore, "copy_sparse")
    scan(store, settings_for.model_copy(update={"image_max_size": 1}))
    assert status_of(store, uuid) == (ImageStatus.ERROR, "virtual size 2.0 GiB exceeds the limit of 1 GiB")
    assert copying.call_count == 0


def test_text_from_the_file_is_quoted_in_the_error_and_the_log(store: Store, settings_for: Settings,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A backing-file name with a newline, a fake log line and escape sequences was copied verbatim
    into the image's error and the log, and so into an admin's `ucloud image list`."""
    folder = settings_for.upload_dir / "alice"
    folder.mkdir(parents=True)
    name = "x\n2026-01-01T00:00:00.000Z INFO ucloud_imagescanner: all good\x1b[2J\x1b[H"
    qemu_img("create", "-f", "qcow2", "-u", "-F", "raw", "-b", name, str(folder / "evil.qcow2"), "1M")
    filescan(store, settings_for.upload_dir, settle=0)
    uuid = request(store, "alice", "evil.qcow2")
    scan(store, settings_for)
    status, error = status_of(store, uuid)
    assert status is ImageStatus.ERROR
    assert error == ("qcow2 with a backing file ('x\\n2026-01-01T00:00:00.000Z INFO ucloud_imagescanner: all good"
                     "\\x1b[2J\\x1b[H') is not accepted")
    lines = [PrintableFormatter().format(r) for r in caplog.records if uuid in r.getMessage()]
    assert lines and all(line.isprintable() for line in lines), lines


def test_a_run_writes_images_created_and_refused_for_the_node_exporter(
        store: Store, settings_for: Settings, uploads: dict[str, Path], tmp_path: Path) -> None:
    settings = settings_for.model_copy(update={"metrics_textfile_dir": tmp_path / "textfiles"})
    filescan(store, settings.upload_dir, settle=0)
    request(store, "alice", "good.raw")
    request(store, "alice", "disguised.img")
    run_periodic_job("ucloud-imagescanner", settings, lambda job_store: scan(job_store, settings))
    figures = parse((tmp_path / "textfiles" / "ucloud_imagescanner.prom").read_text())
    assert value(figures, "ucloud_imagescanner_images_created") == 1
    assert value(figures, "ucloud_imagescanner_images_refused") == 1
    assert value(figures, "ucloud_imagescanner_last_run_timestamp_seconds") > 0
