"""A VM's NoCloud cloud-init seed, the files (pure, from the VM record): the agent writes them on the
drive it attaches (`ucloud_vm.cidata`), and the API checks with them that a new VM's seed fits.

The instance-id is the VM's uuid plus a digest of what the guest is told (as Proxmox does): the same
on every boot while nothing changes, so cloud-init does not re-run its once-per-instance modules;
new when a key or a NIC changes. That is the only way a change reaches a guest at its next boot:
with an unchanged instance-id cloud-init restores its cached copy of the seed and never reads the
drive again, and its ssh module runs once per instance. A new instance also gets new SSH host keys
(cloud-init's ssh_deletekeys, kept on: an image made from a VM must not hand its host keys to every
clone), and cloud-init adds keys but never removes one it installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence

from ucloud_common.errors import PermanentError
from ucloud_common.sshkey import check_public_key
from ucloud_common.vm import NIC, VM

log = logging.getLogger(__name__)

# A real key line is under 1 KiB (RSA-4096: ≈ 750 bytes), so 64 KiB holds over 80 keys: more is a bad
# record, not a need. It also bounds what cloud-init reads into memory and the drive's size.
MAX_USER_DATA = 64 * 1024

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class SeedError(PermanentError):
    """The seed cannot be made from this record (or the host lacks the tools to make it): the VM
    cannot start as it is; `reason` says what to change. Nothing was written."""


class SeedTooLarge(SeedError):
    """The user-data would exceed MAX_USER_DATA."""


def hostname_for(name: str) -> str:
    """The guest host name for a VM name: a VM name may hold `_ : @`, which a host name may not;
    they become `-`, letters are lowered, and dots stay (cloud-init makes `a.b` host `a`, fqdn `a.b`)."""
    labels = re.sub(r"[^a-z0-9.-]", "-", name.lower()).split(".")
    return ".".join(label.strip("-") for label in labels if label.strip("-"))


def seed_files(vm: VM, hostname: str, nics: Sequence[NIC]) -> dict[str, bytes]:
    """The NoCloud files for `vm`: `meta-data`, `user-data`, `network-config` (each JSON, which is
    YAML). `hostname` is the guest's host name (`hostname_for(vm.name)`), `nics` the NICs the guest
    gets, in order: the first is eth0.

    The record is untrusted: an SSH key that is not one line of OpenSSH public key is skipped and
    logged (the VM still boots, reachable with its other keys); a bad host name or MAC, or a MAC
    used twice, raises SeedError; user-data over MAX_USER_DATA raises SeedTooLarge."""
    if len(hostname) > 253 or not all(_LABEL.fullmatch(label) for label in hostname.split(".")):
        raise SeedError(f"cannot build the cloud-init drive: {hostname!r} is not a valid host name")
    user_data = b"#cloud-config\n" + _json({
        # No fqdn: ucloud has no DNS domain to put in one; cloud-init derives it from a dotted name.
        "hostname": hostname,
        # Without this, Debian's cloud config (disable_root: true) installs root's keys behind a
        # command that prints "Please login as the user debian" and disconnects; the owner of a
        # ucloud VM is its root, as `ssh root@<address>` in the quick start expects.
        "disable_root": False,
        "ssh_authorized_keys": _valid_keys(vm),
    })
    if len(user_data) > MAX_USER_DATA:
        raise SeedTooLarge(f"cannot build the cloud-init drive: its user-data would be {len(user_data):,} bytes, "
                           f"over the limit of {MAX_USER_DATA:,} bytes (64 KiB); remove some of the VM's SSH keys")
    network_config = _json(_network_config(nics))
    digest = hashlib.sha256(user_data + b"\0" + network_config)
    return {
        "meta-data": _json({"instance-id": f"{vm.uuid}-{digest.hexdigest()[:16]}", "local-hostname": hostname}),
        "user-data": user_data,
        "network-config": network_config,
    }


def _json(value: object) -> bytes:
    # Non-ASCII stays UTF-8 (a YAML parser reads that as is), rather than JSON's \ud83d-style
    # surrogate pairs, which YAML does not join into one character.
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def _valid_keys(vm: VM) -> list[str]:
    keys = []
    for number, key in enumerate(vm.ssh_keys, 1):
        try:
            keys.append(check_public_key(key))
        except ValueError as exc:
            log.warning("VM %s: SSH key %d of %d left out of the cloud-init drive: %s",
                        vm.uuid, number, len(vm.ssh_keys), exc)
    return keys


def _network_config(nics: Sequence[NIC]) -> dict[str, object]:
    interfaces: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    for index, nic in enumerate(nics):
        mac = nic.mac.lower()
        if not _MAC.fullmatch(mac):
            raise SeedError(f"cannot build the cloud-init drive: the NIC on network {nic.network} "
                            f"has MAC {nic.mac!r}, which is not six hex bytes")
        if mac in seen:
            raise SeedError(f"cannot build the cloud-init drive: MAC {mac} is on two NICs "
                            f"(networks {seen[mac]} and {nic.network})")
        seen[mac] = nic.network
        # Matched by MAC, not by order: the guest's own names (ens3, enp0s4) follow PCI slots, which
        # hot-plug changes. IPv6 comes from the network's router advertisements (SLAAC from the MAC,
        # the address the API shows); there is no DHCP server on a ucloud network to wait for.
        # Version 1, not 2: v2 has no way to say "SLAAC only", and cloud-init (22.4, Debian 12)
        # renders a v2 NIC without DHCP or addresses as `iface eth0 inet manual` with no `auto`,
        # which ifupdown never brings up. v1's ipv6_slaac subnet renders `auto eth0` / `iface eth0
        # inet6 auto` for ifupdown and `accept-ra: true` for netplan (tests/e2e/test_debian_guest.py).
        interfaces.append({"type": "physical", "name": f"eth{index}", "mac_address": mac,
                           "accept-ra": True, "subnets": [{"type": "ipv6_slaac"}]})
    return {"version": 1, "config": interfaces}
