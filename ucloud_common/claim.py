"""Uniqueness claims: `/v1/claim/<kind>/<value>` → the uuid of the object holding it.

A claim is created in the same transaction as the object it belongs to, so two concurrent requests
can never both get the same VM name, VXLAN id or MAC address. Only the API creates claims; whoever
deletes the object (the API, or the agent that deletes a VM) deletes its claims in the same
transaction (`held_by`). A claim whose holder no longer exists anyway (written by an older version)
is stale and may be taken over with a compare-and-swap.
"""

from __future__ import annotations

from ucloud_common.record import Family, Name, Record
from ucloud_common.store import AbstractStore, Remove
from ucloud_common.vm import VM


class Claim(Record):
    holder: Name


VM_NAMES: Family[Claim] = Family("/v1/claim/vm-name/", Claim)  # <owner>:<name>
NETWORK_NAMES: Family[Claim] = Family("/v1/claim/network-name/", Claim)  # <owner>:<name>
IMAGE_NAMES: Family[Claim] = Family("/v1/claim/image-name/", Claim)  # <owner>:<name>
VXLAN_IDS: Family[Claim] = Family("/v1/claim/vxlan-id/", Claim)  # <id>
MACS: Family[Claim] = Family("/v1/claim/mac/", Claim)  # <mac, with - for :>
IPV6_PREFIXES: Family[Claim] = Family("/v1/claim/ipv6-prefix/", Claim)  # <the /64's address, e.g. fd00:1:2:3::>


def owned(owner: str, name: str) -> str:
    """The claim name of an object `name` that is unique per `owner`."""
    return f"{owner}:{name}"


def mac_claim(mac: str) -> str:
    """The claim name of a MAC address (`:` cannot stand in a key part)."""
    return mac.replace(":", "-")


def prefix_claim(prefix: str) -> str:
    """The claim name of a /64 (`/` cannot stand in a key part): its network address."""
    return prefix.split("/", 1)[0]


def held_by(store: AbstractStore, uuid: str, claims: list[tuple[Family[Claim], str]]) -> list[Remove[Claim]]:
    """Removals of those `claims` that `uuid` still holds, each expected unchanged since read, so
    that a claim taken over meanwhile by another object (a stale claim reused) is never removed.
    Whoever deletes an object deletes its claims in the same transaction: none outlives its holder."""
    removals: list[Remove[Claim]] = []
    for family, name in claims:
        claim = store.get(family, name)
        if claim is not None and claim.value.holder == uuid:
            removals.append(Remove(family, name, claim.mod_revision))
    return removals


def vm_claims(vm: VM) -> list[tuple[Family[Claim], str]]:
    """The claims a VM holds: its name (per owner) and each NIC's MAC."""
    return [(VM_NAMES, owned(vm.owner, vm.name)), *((MACS, mac_claim(nic.mac)) for nic in vm.networks)]
