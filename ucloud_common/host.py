"""The host family: `/v1/host/<name>` (the record) and `/v1/host-alive/<name>` (the heartbeat).

The record outlives its agent; liveness is the separate `host-alive` key, attached to the agent's
etcd lease, so etcd itself deletes it when the agent stops renewing. A host record's key is what a
VM's `hostname` holds.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from ucloud_common.record import Family, Name, Record
from ucloud_common.specs import Specs


class HostStatus(StrEnum):
    UP = "UP"
    DOWN = "DOWN"
    MAINTENANCE = "MAINTENANCE"


class Host(Record):
    """A host. `status` is UP when its agent registers (the agent writes it) and DOWN when its
    lease expired (the scheduler writes it, with `down_since`, and `fenced` once the fence ran).

    A host that returns after DOWN finds, in each VM's `hostname`, whether that VM is still its: its
    agent must stop (without touching the disk) any QEMU whose VM now names another host.
    """

    name: Name
    address: str = ""
    capacity: Specs
    status: HostStatus = HostStatus.UP
    down_since: datetime | None = None
    fenced: bool = False
    maintenance: bool = False  # set by an admin through the API: no new VMs while it is on
    drain: bool = False  # set with maintenance by an admin: its VMs are moved away (the scheduler moves them)
    # Written by the scheduler while it drains the host: the VMs it cannot move, by uuid, with why.
    drain_blocked: dict[str, str] = Field(default_factory=dict)
    storage_backends: tuple[str, ...] = ("local",)
    # Those of `storage_backends` that have a place for HDD disks (a directory, a pool): a VM asking
    # for `hdd` is placed only where its backend makes them.
    hdd_backends: tuple[str, ...] = ()
    router: bool = False  # it joins every VM network and routes it (UCLOUD_ROUTER): a peer of every network
    # The images in its local store, by uuid, as its agent last listed them. None: an agent that does
    # not say (one older than this field), counted as holding every image, as such hosts were used.
    images: tuple[str, ...] | None = None
    # Where its agent serves those images to the other hosts ("http://address:port"); "" where it
    # serves none (no UCLOUD_IMAGE_SECRET): such a host can neither give nor fetch an image.
    image_url: str = ""

    def holds(self, image: str) -> bool:
        """Whether a local disk on `image` can be made here without fetching anything."""
        return self.images is None or image in self.images


class HostAlive(Record):
    """Present while the host's agent holds its lease; `agent_id` tells one agent run from the next."""

    agent_id: str = Field(min_length=1)


HOSTS: Family[Host] = Family("/v1/host/", Host, identity="name")
HOSTS_ALIVE: Family[HostAlive] = Family("/v1/host-alive/", HostAlive)
