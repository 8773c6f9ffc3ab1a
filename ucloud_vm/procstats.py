"""What /proc says of a VM's QEMU process: its CPU time, resident memory, and its taps' counters
(read in the process's own network namespace, /proc/<pid>/net/dev, so that taps in a namespace of
their own are found as well)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ucloud_common.vmstats import NicIO
from ucloud_vm.netnames import tap_name

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process, its threads (each vCPU is one) included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command's closing parenthesis: state is field 3 of proc(5), utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def nic_io(pid: int, macs: Iterable[str]) -> dict[str, NicIO]:
    """Per MAC, its tap's counters seen from the guest, in the process's network namespace."""
    return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text(), macs)


def parse_net_dev(text: str, macs: Iterable[str]) -> dict[str, NicIO]:
    """The NICs of `macs` in a /proc/net/dev text; what a tap receives, the guest sent."""
    taps = {tap_name(mac): mac for mac in macs}
    found: dict[str, NicIO] = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        mac = taps.get(name.strip())
        if mac is None:
            continue
        # receive: bytes packets errs drop fifo frame compressed multicast; then transmit: bytes packets …
        values = [int(v) for v in counters.split()]
        found[mac] = NicIO(sent_bytes=values[0], sent_packets=values[1], received_bytes=values[8],
                           received_packets=values[9])
    return found
