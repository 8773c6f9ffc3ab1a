"""The network family: `/v1/network/<uuid>`: one VXLAN segment, IPv6 first."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ucloud_common.record import Family, Name, Record


class Network(Record):
    uuid: Name
    owner: Name
    name: Name
    type: Literal["vxlan"] = "vxlan"
    vxlan_id: int = Field(ge=1, le=16_777_215)
    ipv6_prefix: str = ""  # a /64, e.g. 2001:db8:1::/64; empty when the network has none
    # VMs attached through the API, kept here so that deleting the network and attaching a VM to it
    # conflict in etcd (an entry may outlive its VM: the VM's own NICs are the truth).
    attached: tuple[str, ...] = ()


NETWORKS: Family[Network] = Family("/v1/network/", Network, identity="uuid")
