"""The network family: `/v1/network/<uuid>`: one VXLAN segment, IPv6 first."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from ucloud_common.record import Family, Name, Record
from ucloud_common.store import AbstractStore, Put


class Network(Record):
    uuid: Name
    owner: Name
    name: Name
    type: Literal["vxlan"] = "vxlan"
    vxlan_id: int = Field(ge=1, le=16_777_215)
    ipv6_prefix: str = ""  # a /64, e.g. 2001:db8:1::/64; empty when the network has none
    # VMs attached through the API, kept here so that deleting the network and attaching a VM to it
    # conflict in etcd. Whoever deletes a VM takes it off (`detached`); an entry left by an older
    # version may outlive its VM: the VM's own NICs are the truth.
    attached: tuple[str, ...] = ()


NETWORKS: Family[Network] = Family("/v1/network/", Network, identity="uuid")


def detached(store: AbstractStore, vm_uuid: str, networks: Iterable[str]) -> list[Put[Network]]:
    """Rewrites of those `networks` that still list `vm_uuid` as attached, without it, each expected
    unchanged since read: for the transaction that deletes the VM. Kept, entries of deleted VMs grew a
    network's record by 39 bytes per VM it ever had, rewritten whole by every later attach (after
    10,000 VMs, 390 KB a write; past etcd's 1.5 MiB request limit, no VM could join it again)."""
    writes: list[Put[Network]] = []
    for uuid in networks:
        network = store.get(NETWORKS, uuid)
        if network is not None and vm_uuid in network.value.attached:
            attached = tuple(v for v in network.value.attached if v != vm_uuid)
            writes.append(Put(NETWORKS, uuid, network.value.evolve(attached=attached), network.mod_revision))
    return writes
