"""A NIC keeps its PCI slot through hot-unplugs and hot-plugs, so that a live migration's target,
which builds the guest's devices from the record's command line, has the very device tree the
source's QEMU grew: migrated for real between two QEMUs on this machine (the tiny guest must boot
to let a NIC go: it acknowledges the ACPI eject)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.vm import NIC, VM
from ucloud_vm.driver import RunState
from ucloud_vm.paths import VMPaths
from ucloud_vm.qemu import QemuDriver, execute

A, B, C = "02:00:00:5e:00:0a", "02:00:00:5e:00:0b", "02:00:00:5e:00:0c"


def a_vm(*nics: NIC) -> VM:
    return VM.model_validate({"uuid": "slots", "owner": "alice", "name": "slots", "image": "img",
                              "specs": {"cpu": 1, "ram": 0.25, "ssd": 1}, "networks": [n.model_dump() for n in nics]})


@pytest.fixture
def taps() -> Iterator[dict[str, str]]:
    """One tap per NIC on each side (a tap is opened by one QEMU at a time)."""
    names = {f"{side}{mac[-1]}": f"ucslot{side}{mac[-1]}" for side in ("s", "t") for mac in (A, B, C)}
    for tap in names.values():
        subprocess.run(["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
    yield names
    for tap in names.values():
        subprocess.run(["ip", "link", "del", tap], check=False)


def pci_slots(driver_run: Path) -> dict[str, int]:
    """Device id → PCI slot, as the QEMU of the VM under `driver_run` has them."""
    buses = execute(VMPaths.of(driver_run, "slots"), "query-pci", 10)
    return {d["qdev_id"]: d["slot"] for bus in buses for d in bus["devices"] if d.get("qdev_id")}


def wait_for(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_vm_whose_nics_changed_while_it_ran_migrates_with_each_nic_in_its_slot(
        tmp_path: Path, taps: dict[str, str]) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(tiny_image() / "tiny.qcow2"), str(disk)], check=True)
    drive = [f"file={disk}", "format=qcow2"]
    source, target = QemuDriver(tmp_path / "source", "tcg"), QemuDriver(tmp_path / "target", "tcg")
    # As the API gives them: A and B in the first two slots; A detached, then C attached takes
    # the slot A left.
    a, b, c = NIC(network="n", mac=A, slot=16), NIC(network="n", mac=B, slot=17), NIC(network="n", mac=C, slot=16)
    try:
        source.start(a_vm(a, b), drive, paused=False, seed={"meta-data": b""}, nics={A: taps["sa"], B: taps["sb"]})
        serial = VMPaths.of(tmp_path / "source", "slots").serial
        wait_for(lambda: serial.exists() and BOOTED in serial.read_text(errors="replace"), 120, "the boot")
        source.unplug("slots", A)
        source.plug(a_vm(b, c), C, taps["sc"])
        grown = pci_slots(tmp_path / "source")

        now = a_vm(b, c)
        address = target.receive(now, drive, seed={"meta-data": b""}, nics={B: taps["tb"], C: taps["tc"]},
                                 address="127.0.0.1")
        assert pci_slots(tmp_path / "target") == grown
        source.send("slots", address, 100, 0)
        done = wait_for(lambda: (m := source.migration("slots")).status in ("completed", "failed") and m, 120,
                        "the migration")
        assert done.status == "completed", done.error
        assert wait_for(lambda: target.observe("slots").state is RunState.RUNNING, 30, "the guest on the target")
        assert grown["nic0200005e000b"] == 17 and grown["nic0200005e000c"] == 16
    finally:
        source.kill("slots")
        target.kill("slots")
