"""Names of a host's network devices, derived from ids so that an agent restarted after `kill -9`
finds everything again by name, with no state of its own.

Linux allows 15 characters (IFNAMSIZ 16 with the NUL):

- `ucb<vni hex>`: the network's bridge (a VNI is at most 24 bits: `ucbffffff`, 9 characters);
- `ucx<vni hex>`: its VXLAN device;
- `uct<first 8 hex digits of the VM's uuid><NIC index hex>`: a VM's tap (index below 0x10000:
  at most 15 characters). Two VMs on one host whose uuids share their first 32 bits would share a
  tap name: with 1000 VMs on a host that is a chance of about 1 in 10 000, which `tap_name`'s caller
  (the agent) turns into an error for the second VM rather than a shared tap.

The prefixes are ucloud's own: devices with other names are never touched.
"""

from __future__ import annotations

import re

BRIDGE_PREFIX = "ucb"
VXLAN_PREFIX = "ucx"
TAP_PREFIX = "uct"
MAX_VNI = 0xFFFFFF
MAX_NIC_INDEX = 0xFFFF
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


def tap_name(vm_uuid: str, nic_index: int) -> str:
    """The tap of NIC `nic_index` of VM `vm_uuid`: what QEMU opens with
    `-netdev tap,ifname=<this>,script=no,downscript=no`."""
    digits = vm_uuid.replace("-", "").lower()
    if len(digits) < 8 or not all(c in "0123456789abcdef" for c in digits[:8]):
        raise ValueError(f"{vm_uuid!r} does not start with 8 hex digits")
    if not 0 <= nic_index <= MAX_NIC_INDEX:
        raise ValueError(f"NIC index {nic_index} is outside 0..{MAX_NIC_INDEX}")
    return f"{TAP_PREFIX}{digits[:8]}{nic_index:x}"


def vni_of(name: str) -> tuple[str, int] | None:
    """(`ucb` or `ucx`, VNI) for a bridge or VXLAN device name of ours, else None."""
    match = _VNI_NAME.match(name)
    # A leading zero (or VNI 0) is no name we make: `ucb01` is someone else's device.
    if match is None or match.group(2).startswith("0"):
        return None
    return match.group(1), int(match.group(2), 16)


def is_tap(name: str) -> bool:
    return name.startswith(TAP_PREFIX)
