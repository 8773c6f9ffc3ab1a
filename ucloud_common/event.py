"""A VM's event log: `/v1/event/<vm uuid>:<time>` — what the scheduler and the agent did, and when.

Kept under its own prefix, never under `/v1/vm/`, so that a watch on VMs sees VMs only. The name
sorts by time, so a prefix read returns a VM's story in order.
"""

from __future__ import annotations

import os
import time

from pydantic import Field

from ucloud_common.record import Family, Name, Record
from ucloud_common.store import Put


class Event(Record):
    vm: Name
    source: str = Field(min_length=1)  # "scheduler", "agent h1", "api"
    message: str


EVENTS: Family[Event] = Family("/v1/event/", Event)


def event_name(vm_uuid: str) -> str:
    """A new event's name: the VM, the time in ns (sortable), and a random tail against collisions."""
    return f"{vm_uuid}:{time.time_ns():020d}{os.urandom(2).hex()}"


def events_of(vm_uuid: str) -> str:
    """The name prefix of one VM's events, for `Store.list(EVENTS, within=...)`."""
    return f"{vm_uuid}:"


def new_event(vm_uuid: str, source: str, message: str) -> Put[Event]:
    """The write that appends an event, to go in the same transaction as what it tells of."""
    return Put(EVENTS, event_name(vm_uuid), Event(vm=vm_uuid, source=source, message=message), 0)
