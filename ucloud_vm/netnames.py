"""Names of a host's network devices, derived from ids so that an agent restarted after `kill -9`
finds everything again by name, with no state of its own.

Linux allows 15 characters (IFNAMSIZ 16 with the NUL):

- `ucb<vni hex>`: the network's bridge (a VNI is at most 24 bits: `ucbffffff`, 9 characters);
- `ucx<vni hex>`: its VXLAN device;
- `uct<the NIC's MAC, 12 hex digits>`: a VM's tap (15 characters). A MAC is unique in the whole
  cloud (the API claims it with the NIC), so two NICs never share a tap name, and a NIC keeps its
  tap across hot-plugs and detaches of the VM's other NICs.

The prefixes are ucloud's own: devices with other names are never touched.
"""

from __future__ import annotations

import re

BRIDGE_PREFIX = "ucb"
VXLAN_PREFIX = "ucx"
TAP_PREFIX = "uct"
MAX_VNI = 0xFFFFFF
_VNI_NAME = re.compile(r"^(ucb|ucx)([0-9a-f]{1,6})$")


def _check_vni(vni: int) -> int:
    if not 1 <= vni <= MAX_VNI:
        raise ValueError(f"VNI {vni} is outside 1..{MAX_VNI} (VXLAN has 24 bits)")
    return vni


def bridge_name(vni: int) -> str:
    """The bridge of network `vni` on every host."""
    return f"{BRIDGE_PREFIX}{_check_vni(vni):x}"


def vxlan_name(vni: int) -> str:
    """The VXLAN device of network `vni` on every host."""
    return f"{VXLAN_PREFIX}{_check_vni(vni):x}"


def tap_name(mac: str) -> str:
    """The tap of the NIC with `mac`: what QEMU opens with `-netdev tap,ifname=<this>,script=no,downscript=no`."""
    digits = mac.replace(":", "").lower()
    if len(digits) != 12 or not all(c in "0123456789abcdef" for c in digits):
        raise ValueError(f"{mac!r} is not a MAC address")
    return f"{TAP_PREFIX}{digits}"


def vni_of(name: str) -> tuple[str, int] | None:
    """(`ucb` or `ucx`, VNI) for a bridge or VXLAN device name of ours, else None."""
    match = _VNI_NAME.match(name)
    # A leading zero (or VNI 0) is no name we make: `ucb01` is someone else's device.
    if match is None or match.group(2).startswith("0"):
        return None
    return match.group(1), int(match.group(2), 16)


def is_tap(name: str) -> bool:
    return name.startswith(TAP_PREFIX)
