"""RBD disks, fencing and image stores against a real one-node Ceph."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import pytest

from tests.helpers.ceph import CephServer
from tests.helpers.tiny import tiny_image
from ucloud_common.ceph import SNAPSHOT, Ceph
from ucloud_common.config import Settings
from ucloud_common.host import Host
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.imagestore import Outcome
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_common.user import USERS, User
from ucloud_common.vm import VM
from ucloud_scheduler.fencing import RBDFence
from ucloud_vm.images import import_image
from ucloud_vm.storage import RBDStorage, StorageError

REPO = Path(__file__).resolve().parents[2]


def a_vm(uuid: str, ssd: int = 1) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=0.25, ssd=ssd), image="tiny", storage="rbd")


def test_an_image_is_stored_with_a_protected_snapshot(ceph: Ceph, tiny_in_rbd: str) -> None:
    import rbd

    with ceph.pool("images") as ioctx, rbd.Image(ioctx, tiny_in_rbd) as image:
        assert [s["name"] for s in image.list_snaps()] == [SNAPSHOT]
        assert image.is_protected_snap(SNAPSHOT)
        assert image.read(0, 4096) == (tiny_image() / "tiny.raw").read_bytes()[:4096]


def test_a_vm_disk_is_a_clone_grown_to_its_size_and_goes_on_delete(ceph: Ceph, tiny_in_rbd: str) -> None:
    import rbd

    storage = RBDStorage(ceph, "images", "vms")
    vm = a_vm("disk-test", ssd=2)
    storage.create(vm)
    storage.create(vm)  # idempotent
    with ceph.pool("vms") as ioctx, rbd.Image(ioctx, vm.uuid) as disk:
        assert disk.size() == 2 * 1024**3
        assert disk.parent_info()[:2] == ("images", "tiny")
        assert disk.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    assert storage.drive(vm)[:2] == [f"file=rbd:vms/{vm.uuid}:conf={ceph.conf}", "format=raw"]
    storage.delete(vm)
    storage.delete(vm)
    assert not storage.exists(vm)
    with pytest.raises(StorageError, match="image ghost is not in pool images"):
        storage.create(VM(uuid="x", owner="a", name="x", specs=Specs(cpu=1, ram=1, ssd=1), image="ghost"))


def test_fencing_blocklists_the_old_client_whose_writes_then_fail(ceph: Ceph, ceph_server: CephServer,
                                                                  tiny_in_rbd: str) -> None:
    storage = RBDStorage(ceph, "images", "vms")
    vm = a_vm("fence-test")
    storage.create(vm)
    writer = subprocess.Popen([sys.executable, "-m", "tests.helpers.rbd_writer", str(ceph_server.conf), "vms", vm.uuid],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: Queue[str] = Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in writer.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        seen: list[str] = []

        def wait_for(text: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    seen.append(lines.get(timeout=0.2))
                except Empty:
                    continue
                if seen[-1].startswith(text):
                    return
            raise AssertionError(f"{text} not seen: {seen[-5:]}")

        wait_for("WROTE", 30)
        RBDFence(ceph, "vms").fence(Host(name="dead", capacity=Specs(cpu=1, ram=1, ssd=1)), [vm])
        wait_for("FAILED", 30)
        assert seen[-1] == "FAILED 108", seen[-1]  # ESHUTDOWN: the client is blocklisted
        before = len(seen)
        time.sleep(1)
        while not lines.empty():
            seen.append(lines.get())
        assert "WROTE" not in seen[before:], "a fenced client wrote again"
    finally:
        writer.kill()
        writer.wait()
        storage.delete(vm)


def test_image_scanner_fills_the_rbd_store_and_refuses_into_nothing(
        ceph: Ceph, store, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ucloud_common.file import FILES
    from ucloud_common.image import IMAGES, Image, ImageStatus
    from ucloud_filescan.scan import scan as filescan
    from ucloud_imagescanner.scanner import scan

    own = settings.model_copy(update={"upload_dir": tmp_path / "www", "image_dir": tmp_path / "images",
                                      "ceph_image_pool": "images"})
    store.create(USERS, "alice", User(name="alice"))  # file-scan looks only at the folders of users
    folder = own.upload_dir / "alice"
    folder.mkdir(parents=True)
    (folder / "good.qcow2").write_bytes((tiny_image() / "tiny.qcow2").read_bytes())
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd",
                    str(folder / "evil.qcow2")], check=True)
    filescan(store, own.upload_dir, settle=0)
    for f in store.list(FILES).items.values():
        uuid = "rbd-" + f.value.filename.split(".")[0]
        store.create(IMAGES, uuid, Image(uuid=uuid, owner="alice", name=uuid, store_name="images", file_uuid=f.name))
    report = scan(store, own, ceph)
    assert report.created == 1 and report.refused == 1
    assert store.get(IMAGES, "rbd-good").value.status is ImageStatus.CREATED  # type: ignore[union-attr]
    evil = store.get(IMAGES, "rbd-evil").value  # type: ignore[union-attr]
    assert evil.status is ImageStatus.ERROR and "backing file (/etc/passwd)" in evil.error
    assert ceph.exists("images", "rbd-good") and not ceph.exists("images", "rbd-evil")
    import rbd

    with ceph.pool("images") as ioctx, rbd.Image(ioctx, "rbd-good") as image:
        assert image.is_protected_snap(SNAPSHOT)
        assert image.read(0, 1 << 20) == (tiny_image() / "tiny.raw").read_bytes()[: 1 << 20]
    ceph.remove_image("images", "rbd-good")


def test_ceph_failures_are_classed_by_their_errno() -> None:
    """A timeout or a lost connection is worth retrying (CephUnavailable, a TemporaryError); a refusal is not."""
    import errno

    import rados
    import rbd

    from ucloud_common.ceph import CephError, CephUnavailable, _failed
    from ucloud_common.errors import TemporaryError

    for exc in (rados.TimedOut("t", errno=errno.ETIMEDOUT), rbd.Timeout("t", errno=errno.ETIMEDOUT),
                rbd.ConnectionShutdown("c", errno=errno.ESHUTDOWN), rbd.NoSpace("n", errno=errno.ENOSPC)):
        failure = _failed("cannot store image images/x", exc)
        assert isinstance(failure, CephUnavailable) and isinstance(failure, TemporaryError), exc
        assert str(failure).startswith("cannot store image images/x: ")
    for exc in (rbd.PermissionError("p", errno=errno.EPERM), rados.ObjectNotFound("o", errno=errno.ENOENT)):
        failure = _failed("cannot open pool images", exc)
        assert type(failure) is CephError and not isinstance(failure, TemporaryError), exc


def test_import_image_stores_into_the_ceph_image_pool(ceph: Ceph, store: Store, settings: Settings,
                                                      tmp_path: Path) -> None:
    """import-image into RBD: image-scanner's checks and record writes, a protected snapshot, nothing staged."""
    settings = settings.model_copy(update={"image_dir": tmp_path / "images", "ceph_image_pool": "images"})
    request = Image(uuid="imported", owner="admin", name="imported", store_name="images")
    try:
        assert import_image(store, settings, tiny_image() / "tiny.qcow2", request, ceph) == Outcome(ImageStatus.CREATED)
        record = store.get(IMAGES, "imported")
        assert record is not None and record.value.status is ImageStatus.CREATED
        import rbd

        with ceph.pool("images") as ioctx, rbd.Image(ioctx, "imported") as image:
            assert image.is_protected_snap(SNAPSHOT)
            assert image.read(0, 4096) == (tiny_image() / "tiny.raw").read_bytes()[:4096]
        assert not list((settings.image_dir / ".staging").iterdir())
    finally:
        ceph.remove_image("images", "imported")
