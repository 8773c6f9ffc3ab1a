"""Uniqueness claims: `/v1/claim/<kind>/<value>` → the uuid of the object holding it.

A claim is created in the same transaction as the object it belongs to, so two concurrent requests
can never both get the same VM name, VXLAN id or MAC address. Only the API writes claims. A claim
whose holder no longer exists (deleted by an agent, which knows nothing of claims) is stale and may
be taken over with a compare-and-swap.
"""

from __future__ import annotations

from ucloud_common.record import Family, Name, Record


class Claim(Record):
    holder: Name


VM_NAMES: Family[Claim] = Family("/v1/claim/vm-name/", Claim)  # <owner>:<name>
NETWORK_NAMES: Family[Claim] = Family("/v1/claim/network-name/", Claim)  # <owner>:<name>
IMAGE_NAMES: Family[Claim] = Family("/v1/claim/image-name/", Claim)  # <owner>:<name>
VXLAN_IDS: Family[Claim] = Family("/v1/claim/vxlan-id/", Claim)  # <id>
MACS: Family[Claim] = Family("/v1/claim/mac/", Claim)  # <mac, with - for :>


def owned(owner: str, name: str) -> str:
    """The claim name of an object `name` that is unique per `owner`."""
    return f"{owner}:{name}"
