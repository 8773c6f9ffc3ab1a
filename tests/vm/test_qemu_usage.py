"""The QEMU driver's figures of a real QEMU (TCG, no guest OS: the firmware reading the disk's boot
sector is the I/O measured): CPU time and memory from /proc, the disk's reads from QMP query-blockstats;
and a NIC's counters as /proc/<pid>/net/dev gives them."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cluster import wait_for
from tests.vm.test_guacamole_vnc import a_vm
from ucloud_common.vmstats import NicIO, Usage
from ucloud_vm.netnames import tap_name
from ucloud_vm.procstats import parse_net_dev
from ucloud_vm.qemu import QemuDriver

MAC = "52:54:00:00:00:01"


def test_a_running_qemu_reports_its_cpu_memory_and_disk_reads(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path / "run", "tcg")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1024 * 1024))
    assert driver.usage("vm-u") is None, "no process, no figures"
    driver.start(a_vm("vm-u"), [f"file={disk}", "format=raw", "readonly=on"], paused=False,
                 seed={"meta-data": b""}, nics={})
    try:
        seen: list[Usage | None] = []

        def read_its_boot_sector() -> bool:
            seen.append(driver.usage("vm-u"))
            found = seen[-1]
            return found is not None and found.disks.get("disk0") is not None and found.disks["disk0"].read_bytes > 0

        wait_for(read_its_boot_sector, 30, "the firmware's read of the disk")
        used = seen[-1]
        assert used is not None
        assert used.cpu_seconds > 0 and used.rss_bytes > 16 << 20
        assert used.disks["disk0"].reads >= 1 and used.disks["disk0"].written_bytes == 0
        assert used.nics == {}
    finally:
        driver.kill("vm-u")
    assert driver.usage("vm-u") is None


def test_a_taps_counters_are_the_guests_the_other_way_round() -> None:
    """/proc/<pid>/net/dev as Linux 6.1 writes it: a tap's receive is what its guest sent."""
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
            "carrier compressed\n"
            "    lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0 "
            "      0          0\n"
            f"{tap_name(MAC)}:  5000  50    0    0    0     0          0         0   7000  70    0    0    0     0 "
            "      0          0\n")
    assert parse_net_dev(text, [MAC, "52:54:00:00:00:02"]) == {
        MAC: NicIO(sent_bytes=5000, sent_packets=50, received_bytes=7000, received_packets=70)}
