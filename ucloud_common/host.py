"""The host family: `/v1/host/<name>` (the record) and `/v1/host-alive/<name>` (the heartbeat).

The record outlives its agent; liveness is the separate `host-alive` key, attached to the agent's
etcd lease, so etcd itself deletes it when the agent stops renewing. A host record's key is what a
VM's `hostname` holds.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from ucloud_common.record import Family, Name, Record
from ucloud_common.specs import Specs


class HostStatus(StrEnum):
    UP = "UP"
    DOWN = "DOWN"
    MAINTENANCE = "MAINTENANCE"


class Host(Record):
    name: Name
    address: str = ""
    capacity: Specs
    status: HostStatus = HostStatus.UP  # UP by the agent, DOWN by the scheduler
    maintenance: bool = False  # set by an admin through the API: no new VMs while it is on
    storage_backends: tuple[str, ...] = ("local",)


class HostAlive(Record):
    """Present while the host's agent holds its lease; `agent_id` tells one agent run from the next."""

    agent_id: str = Field(min_length=1)


HOSTS: Family[Host] = Family("/v1/host/", Host)
HOSTS_ALIVE: Family[HostAlive] = Family("/v1/host-alive/", HostAlive)
