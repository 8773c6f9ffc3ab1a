"""The agent's parts on their own: the QEMU command line, local storage and image import with the
real qemu-img (import with a real etcd), per-VM serialization."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

import ucloud_vm.workers
from tests.helpers.tiny import tiny_image
from ucloud_common.config import Settings
from ucloud_common.errors import PermanentError
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.imagestore import Outcome, local_image_path
from ucloud_common.store import Store
from ucloud_common.vm import VM
from ucloud_common.quota import USAGES
from ucloud_vm import qemu
from ucloud_vm.accel import choose
from ucloud_vm.images import import_image
from ucloud_vm.paths import VMPaths
from ucloud_vm.storage import LocalStorage, StorageError
from ucloud_vm.workers import KeyedWorkers


def a_vm(**fields: object) -> VM:
    return VM.model_validate({"uuid": "u1", "owner": "alice", "name": "web", "image": "img",
                              "specs": {"cpu": 2, "ram": 0.5, "ssd": 1}, **fields})


def test_the_command_line() -> None:
    paths = VMPaths.of(Path("/run/x"), "u1")
    argv = qemu.command_line(a_vm(), ["file=/d/u1.qcow2", "format=qcow2"], paths, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    joined = " ".join(argv)
    assert "-accel tcg" in joined and "-smp 2" in joined and "-m 512" in joined
    assert "-daemonize -pidfile /run/x/vms/u1/qemu.pid" in joined and "-no-shutdown" in joined
    assert "unix:/run/x/vms/u1/qmp.sock,server=on,wait=off" in joined
    assert "file=/d/u1.qcow2,format=qcow2,if=virtio,id=disk0" in joined
    assert "-cpu" not in argv
    kvm = " ".join(qemu.command_line(a_vm(), ["format=raw"], paths, "kvm"))
    assert "-accel kvm" in kvm and "-cpu host" in kvm
    assert "-S" not in argv and "-S" in qemu.command_line(a_vm(), ["format=raw"], paths, "tcg", paused=True)
    assert joined.count("-vnc") == 1 and "password" not in joined  # no TCP VNC unless asked for
    guacamole = " ".join(qemu.command_line(a_vm(), ["format=raw"], paths, "tcg",
                                           guacamole=qemu.GuacamoleVNC("fd00::7", 100)))
    assert "-vnc unix:/run/x/vms/u1/vnc.sock" in guacamole  # the console proxy's stays as it was
    assert "-object secret,id=vncpass,file=/run/x/vms/u1/vnc-password" in guacamole
    assert "-vnc [fd00::7]:0,to=99,id=guacamole,password-secret=vncpass" in guacamole
    assert "id=disk1" not in joined
    with_hdd = qemu.command_line(a_vm(), ["file=/d/u1.qcow2", "format=qcow2"], paths, "tcg",
                                 seed=["file=/s", "format=raw", "id=cidata"], hdd=["file=/h/u1-hdd.qcow2", "format=qcow2"])
    drives = [with_hdd[i + 1] for i, arg in enumerate(with_hdd) if arg == "-drive"]
    # The HDD disk right after the system disk: the guest's /dev/vdb, the seed drive after it.
    assert drives == ["file=/d/u1.qcow2,format=qcow2,if=virtio,id=disk0",
                      "file=/h/u1-hdd.qcow2,format=qcow2,if=virtio,id=disk1", "file=/s,format=raw,id=cidata"]


def test_paths_refuse_names_that_escape() -> None:
    with pytest.raises(ValueError):
        VMPaths.of(Path("/run"), "../etc")


def test_local_storage_makes_an_overlay_grown_to_the_ssd_size(tmp_path: Path) -> None:
    images, disks = tmp_path / "images", tmp_path / "disks"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(images, "img")), "64M"], check=True)
    storage = LocalStorage(images, disks)
    vm = a_vm()
    storage.create(vm)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(storage.disk_path(vm))], check=True,
                          capture_output=True, text=True).stdout
    assert '"virtual-size": 1073741824' in info and '"backing-filename-format": "raw"' in info
    before = storage.disk_path(vm).stat().st_mtime_ns
    storage.create(vm)  # idempotent: an existing disk is kept
    assert storage.disk_path(vm).stat().st_mtime_ns == before
    assert storage.drive(vm)[1] == "format=qcow2"
    storage.delete(vm)
    storage.delete(vm)
    assert not storage.exists(vm)


def virtual_size(path: Path) -> int:
    info = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True,
                          text=True).stdout
    return int(json.loads(info)["virtual-size"])


def test_local_storage_makes_an_empty_hdd_disk_grows_both_and_deletes_both(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(images, "img")), "64M"], check=True)
    storage = LocalStorage(images, tmp_path / "disks", tmp_path / "hdd")
    vm = a_vm(specs={"cpu": 1, "ram": 0.5, "ssd": 1, "hdd": 3})
    storage.create(vm)
    hdd = tmp_path / "hdd" / "u1-hdd.qcow2"
    assert storage.hdd_path(vm) == hdd and virtual_size(hdd) == 3 * 1024**3
    assert "backing-filename" not in subprocess.run(["qemu-img", "info", "--output=json", str(hdd)], check=True,
                                                    capture_output=True, text=True).stdout, "an empty disk"
    assert storage.hdd_drive(vm) == [f"file={hdd}", "format=qcow2", "cache=writeback", "discard=unmap"]
    assert storage.hdd_drive(a_vm()) is None, "no hdd asked: no second drive"
    # A resize reaches the disks at the next start, through create: grown, never shrunk.
    storage.create(vm.evolve(specs=vm.specs.model_copy(update={"ssd": 2, "hdd": 5})))
    assert (virtual_size(storage.disk_path(vm)), virtual_size(hdd)) == (2 * 1024**3, 5 * 1024**3)
    storage.create(vm)
    assert (virtual_size(storage.disk_path(vm)), virtual_size(hdd)) == (2 * 1024**3, 5 * 1024**3)
    storage.delete(vm)
    assert not hdd.exists() and not storage.exists(vm)
    # A VM grown from no HDD disk gets one at its next start.
    storage.create(a_vm())
    assert not hdd.exists()
    storage.create(vm)
    assert virtual_size(hdd) == 3 * 1024**3
    without = LocalStorage(images, tmp_path / "other")
    assert not without.offers_hdd and storage.offers_hdd
    with pytest.raises(StorageError, match="asks for 3 GiB HDD but this host keeps no HDD disks"):
        without.create(vm)


def test_local_storage_errors_say_why(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images", tmp_path / "disks")
    with pytest.raises(StorageError, match="image img is not in this host's image store"):
        storage.create(a_vm())
    (tmp_path / "images").mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(tmp_path / "images", "img")), "2G"],
                   check=True)
    with pytest.raises(StorageError, match="more than the VM's ssd of 1 GiB"):
        storage.create(a_vm())
    assert not list((tmp_path / "disks").glob("*")), "nothing half made"


def test_import_makes_the_image_and_refuses_what_points_elsewhere(store: Store, settings: Settings,
                                                                  tmp_path: Path) -> None:
    """import-image goes through image-scanner's checks and record writes (`imagestore`)."""
    settings = settings.model_copy(update={"image_dir": tmp_path / "images"})

    def imported(path: Path, uuid: str) -> Outcome:
        return import_image(store, settings, path, Image(uuid=uuid, owner="admin", name=uuid, store_name="local"))

    assert imported(tiny_image() / "tiny.qcow2", "tiny") == Outcome(ImageStatus.CREATED)
    assert local_image_path(settings.image_dir, "tiny").read_bytes() == (tiny_image() / "tiny.raw").read_bytes()
    # Counted in its owner's usage once, also when imported again over itself.
    assert imported(tiny_image() / "tiny.qcow2", "tiny") == Outcome(ImageStatus.CREATED)
    tiny = store.get(IMAGES, "tiny")
    usage = store.get(USAGES, "admin")
    assert tiny is not None and usage is not None and tiny.value.size > 0
    assert (usage.value.images, usage.value.image_bytes) == (1, tiny.value.size)
    with pytest.raises(PermanentError, match="image tiny is admin's"):
        import_image(store, settings, tiny_image() / "tiny.qcow2", tiny.value.evolve(owner="alice"))
    backed = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(backed)],
                   check=True)
    data_file = tmp_path / "datafile.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'x.raw'}",
                    str(data_file), "1M"], check=True)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    huge = tmp_path / "huge.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(huge), f"{settings.image_max_size + 1}G"],
                   check=True)
    for path, why in [(backed, "backing file"), (data_file, "external data file"), (vmdk, "format vmdk is not accepted"),
                      (huge, f"exceeds the limit of {settings.image_max_size} GiB")]:
        outcome = imported(path, path.stem)
        assert outcome.status is ImageStatus.ERROR and why in outcome.reason, outcome
        record = store.get(IMAGES, path.stem)
        assert record is not None and record.value.error == outcome.reason
        assert not local_image_path(settings.image_dir, path.stem).exists()
    with pytest.raises(PermanentError, match="image store elsewhere is not served here"):
        import_image(store, settings, backed, Image(uuid="x", owner="admin", name="x", store_name="elsewhere"))
    assert store.get(IMAGES, "x") is None, "nothing written for a store not served here"


def test_the_accelerator_from_configuration_is_taken_as_is(tmp_path: Path) -> None:
    assert choose("tcg", tmp_path) == "tcg"
    assert choose("kvm", tmp_path) == "kvm"
    # auto without a probe image never bets on KVM
    assert choose("auto", tmp_path) == "tcg"


def test_work_on_one_vm_is_serialized_and_folds_repeated_asks() -> None:
    running: dict[str, int] = {}
    overlaps: list[str] = []
    calls: list[str] = []
    lock = threading.Lock()

    def handler(key: str) -> None:
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
            calls.append(key)
        time.sleep(0.05)
        with lock:
            running[key] -= 1

    workers = KeyedWorkers(handler, threads=4)
    for _ in range(10):
        workers.submit("a")
        workers.submit("b")
    time.sleep(0.5)
    workers.close()
    assert overlaps == []
    assert 2 <= calls.count("a") <= 3 and 2 <= calls.count("b") <= 3


def test_a_sooner_look_again_replaces_a_later_one() -> None:
    """A 60 s shutdown wait pending must not delay a 1 s restart backoff asked for afterwards."""
    calls: list[float] = []
    delays = iter([30.0, 0.2])
    started = time.monotonic()

    def handler(key: str) -> float | None:
        calls.append(time.monotonic() - started)
        return next(delays, None)

    workers = KeyedWorkers(handler)
    workers.submit("a")
    deadline = time.monotonic() + 5
    while len(calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # the first run has returned its 30 s
    workers.submit("a", 0.2)  # asked again (a watch event, say): a look in 0.2 s beats the 30 s one
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers.close()
    assert len(calls) == 2 and calls[1] < 2.0, calls


def test_a_failing_vm_does_not_stop_the_others() -> None:
    done = threading.Event()

    def handler(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        done.set()

    workers = KeyedWorkers(handler)
    workers.submit("bad")
    workers.submit("good")
    assert done.wait(2)
    workers.close()


def test_a_failing_handler_is_told_once_and_its_vm_looked_at_again(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The workers' loop: a handler raising (a bug) three times in a row for one VM is told once,
    and the VM is looked at again until it works."""
    monkeypatch.setattr(ucloud_vm.workers, "FAILED_RETRY_S", 0.05)
    calls: list[str] = []
    done = threading.Event()

    def handler(key: str) -> None:
        calls.append(key)
        if len(calls) <= 3:
            raise RuntimeError("a bug, injected by the test")
        done.set()

    workers = KeyedWorkers(handler)
    workers.submit("u1")
    assert done.wait(5)
    workers.close()
    told = [r.getMessage() for r in caplog.records if "injected by the test" in r.getMessage()]
    assert calls == ["u1"] * 4 and len(told) == 1 and told[0].startswith("reconcile (vm=u1) failed")
    assert "reconcile (vm=u1) works again after failing 3 times in a row" in caplog.text


def test_a_store_outage_in_a_reconcile_is_one_warning_and_a_quick_retry(
        mocker, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Error path only (etcd away mid-reconcile): no traceback, and a look again in a second rather
    than the workers' 5 s for unexpected failures."""
    from ucloud_common.config import load_settings
    from ucloud_common.specs import Specs
    from ucloud_common.store import StoreUnavailable
    from ucloud_vm.agent import Agent, HostSpec
    from ucloud_vm.qemu import QemuDriver

    store = mocker.Mock()
    store.get.side_effect = StoreUnavailable("etcd at x is unavailable (range): UNAVAILABLE")
    (tmp_path / "empty.conf").write_text("")
    settings = load_settings(tmp_path / "empty.conf")
    agent = Agent(store, settings, HostSpec("h1", "127.0.0.1", Specs(cpu=1, ram=1, ssd=1)),
                  QemuDriver(tmp_path, "tcg"), {})
    with caplog.at_level("WARNING"):
        assert agent.reconcile("u1").look_again == settings.store_retry
    assert [r.getMessage() for r in caplog.records] == [
        f"vm=u1: etcd at x is unavailable (range): UNAVAILABLE; looking again in {settings.store_retry:.0f} s"]
    assert all(r.exc_info is None for r in caplog.records)
