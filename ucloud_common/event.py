"""Event logs of objects: `/v1/event/<kind>:<name>:<time>` — who asked for what (the API, with the user
and the request id), and what the scheduler and the agents did about it, and when.

Kept under its own prefix, never under `/v1/vm/`, so that a watch on VMs sees VMs only. The name
sorts by time, so a prefix read returns an object's story in order. Every event lives on a shared
lease (`SharedLeases`, one per bucket of time) for `UCLOUD_EVENT_RETENTION` seconds after it was
written, whether its object lives on or not: a deleted VM's story can still be read for that long,
and etcd holds at most that window of events, however many crashes a VM has had.
"""

from __future__ import annotations

import os
import time
from enum import StrEnum

from pydantic import Field

from ucloud_common.record import Family, Record
from ucloud_common.sharedlease import SharedLease, SharedLeases
from ucloud_common.store.contract import AbstractStore, Put

# The longest bucket of events sharing one lease: an event is kept at most this much longer than asked.
BUCKET_MAX_SECONDS = 3600.0
# A request id as the API takes it from a client (`ucloud_api.audit`) and stores it here.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@=+/-]{0,127}$"


class Kind(StrEnum):
    VM = "vm"
    NETWORK = "network"
    IMAGE = "image"
    USER = "user"
    HOST = "host"


class Event(Record):
    object: str = Field(min_length=3)  # "<kind>:<name>", e.g. "vm:<uuid>" (see `ref`)
    source: str = Field(min_length=1)  # "scheduler", "agent h1", "api"
    message: str
    user: str = ""  # who asked: the API's events name the caller
    request_id: str = ""  # the API request this tells of, or (scheduler, agent) the VM's last one


EVENTS: Family[Event] = Family("/v1/event/", Event)
EVENT_LEASES: Family[SharedLease] = Family("/v1/event-lease/", SharedLease)  # <bucket number>-<TTL>

_leases: dict[float, SharedLeases] = {}


def ref(kind: Kind, name: str) -> str:
    """The object an event belongs to, as events name it: `vm:<uuid>`, `user:alice`, `host:h1`."""
    return f"{kind.value}:{name}"


def event_name(obj: str) -> str:
    """A new event's name: the object, the time in ns (sortable), and a random tail against collisions."""
    return f"{obj}:{time.time_ns():020d}{os.urandom(2).hex()}"


def events_of(obj: str) -> str:
    """The name prefix of one object's events, for `Store.list(EVENTS, within=...)`. It may also hold
    another's whose name continues this one's after a ':' (host "a" and host "a:b"): `object_events`
    filters them out."""
    return f"{obj}:"


def object_events(store: AbstractStore, obj: str) -> list[Event]:
    """One object's events, oldest first."""
    listing = store.list(EVENTS, within=events_of(obj), where={"object": obj})
    return [item.value for _, item in sorted(listing.items.items())]


def event_leases(store: AbstractStore) -> SharedLeases:
    """The shared leases that keep events for the store's `event_retention`."""
    retention = store.settings.event_retention
    if retention not in _leases:
        # A bucket of 1/24 of the retention, at most an hour: events are kept at most 4% longer than asked.
        _leases[retention] = SharedLeases(EVENT_LEASES, min(BUCKET_MAX_SECONDS, retention / 24), retention)
    return _leases[retention]


# Before events belonged to any object they were a VM's, named `<vm uuid>:<time>`, kept without a lease
# and deleted with the VM; with the VM no longer deleting them, nothing would. A uuid starts with a hex
# digit and no `Kind` does, so these prefixes hold those events and nothing else.
_OLD_LAYOUT = "0123456789abcdef"


def forget_old_events(store: AbstractStore) -> int:
    """Delete the events of the layout before the audit trail (no object, read by nobody, skipped with
    a warning by every listing); return how many. Deleting again deletes nothing more."""
    return sum(store.delete_all(EVENTS, first) for first in _OLD_LAYOUT)


def new_event(store: AbstractStore, obj: str, source: str, message: str, *, user: str = "",
              request_id: str = "") -> Put[Event]:
    """The write that appends an event, to go in the same transaction as what it tells of. A
    transaction holding it raises `LeaseExpired` if the shared lease was revoked meanwhile: then
    `event_leases(store).forget(store)` and write again."""
    event = Event(object=obj, source=source, message=message, user=user, request_id=request_id)
    return Put(EVENTS, event_name(obj), event, 0, lease=event_leases(store).current(store))

