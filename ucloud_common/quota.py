"""Quotas per user: what a user may hold (`/v1/quota/<user>`: an admin's settings, each resource
left unset following the defaults in `Settings`), what they hold (`/v1/usage/<user>`), and the one way
the usage changes.

What a record costs is defined once (`cost`): a VM its count, cpu, ram, ssd and hdd; an image its
count and, once made, its bytes; a registered file its bytes. Whoever writes such a record (the API
creating a VM or an image, the agent removing a deleted VM, image-scanner making an image, file-scan
registering a file, a resize, an upload) adds `change(before, after)` to its owner's usage with
`charged`: a compare-and-swap Put of the usage record that goes in the SAME transaction as the record
itself. Two concurrent creations thus both read the same usage, and only one of them can write its
next revision: the other's transaction fails as a whole, re-reads, and is refused if the last unit
is gone. Nothing is counted twice or lost: a record's cost is charged only by the transaction that
writes it and released only by the one that removes it.

The usage record has many writers (it is counted, not owned), all by compare-and-swap. A usage
record that is missing (a user from before quotas existed) is counted from the records when first
needed; `recount` repairs one that drifted (a record written by hand, a bug) the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGES, Image
from ucloud_common.keyedlock import KeyedLocks
from ucloud_common.record import Family, Name, Record
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.store import AbstractStore, Conflict, Put, Remove
from ucloud_common.vm import VMS, VM

log = logging.getLogger(__name__)

GiB = 2**30
# Writers that lost the usage record's compare-and-swap together retry soon, jittered apart.
_RETRY = Backoff(initial=0.002, maximum=0.1)
_charging = KeyedLocks()  # by user: see `charging`


@dataclass(frozen=True)
class Resource:
    """One thing a quota bounds: its field in `Quota` and `Usage`, what it is, its unit in those
    records, and the `Settings` field that holds its default (in GiB where the unit is bytes)."""

    name: str
    what: str
    unit: str
    setting: str

    @property
    def scale(self) -> int:
        """The setting's unit in the record's: the settings say GiB where the records count bytes."""
        return GiB if self.unit == "bytes" else 1

    def shown(self, amount: float) -> str:
        """`amount` as a person reads it: bytes as GiB."""
        if self.unit == "bytes":
            return f"{amount / GiB:.3g} GiB"
        return f"{amount:g} {self.unit}"


RESOURCES: tuple[Resource, ...] = (
    Resource("vms", "VMs", "VMs", "max_vms_per_user"),
    Resource("cpu", "virtual CPUs of the VMs", "vCPUs", "max_cpu_per_user"),
    Resource("ram", "RAM of the VMs", "GiB", "max_ram_per_user"),
    Resource("ssd", "SSD disks of the VMs", "GiB", "max_ssd_per_user"),
    Resource("hdd", "HDD disks of the VMs", "GiB", "max_hdd_per_user"),
    Resource("images", "images", "images", "max_images_per_user"),
    Resource("image_bytes", "virtual sizes of the images made", "bytes", "image_quota"),
    Resource("upload_bytes", "uploaded files", "bytes", "upload_quota"),
)
BY_NAME = {r.name: r for r in RESOURCES}

Amounts = Mapping[str, float]  # resource name → amount (a change may be negative)


_COUNT = 1_000_000  # more than any cluster holds: larger numbers are typos
# 1 PiB. Below 2**53, so that JSON's numbers (doubles, for many clients) hold every value exactly.
_BYTES = 2**50


def _whole(value: Any) -> Any:
    """2.0 as 2: JSON Schema's integers include numbers spelled with a zero fraction (the API's strict
    request models refuse any other float, a string or a boolean for an integer)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds before the validator: after it, pydantic writes them into the JSON schema as "ge"/"le".
Count = Annotated[int, Field(ge=0, le=_COUNT), BeforeValidator(_whole)]
GiBs = Annotated[int, Field(ge=0, le=_BYTES // GiB, description="GiB"), BeforeValidator(_whole)]
Bytes = Annotated[int, Field(ge=0, le=_BYTES), BeforeValidator(_whole)]


class QuotaSettings(BaseModel):
    """What an admin sets of one user's quota: a resource set to None follows its default in the
    settings."""

    vms: Count | None = None
    cpu: Count | None = None
    ram: Annotated[float, Field(ge=0, le=_COUNT * 1024, description="GiB")] | None = None
    ssd: GiBs | None = None
    hdd: GiBs | None = None
    images: Count | None = None
    image_bytes: Bytes | None = None
    upload_bytes: Bytes | None = None


class Quota(Record, QuotaSettings):
    """An admin's quota of one user."""

    user: Name


class Usage(Record):
    """What one user holds, in the units of `Quota`; written only with `charged` (or `recount`)."""

    user: Name
    vms: int = Field(0, ge=0)
    cpu: int = Field(0, ge=0)
    # Whole MiB in GiB (the API takes no other ram): sums of such binary fractions are exact.
    ram: float = Field(0, ge=0)
    ssd: int = Field(0, ge=0)
    hdd: int = Field(0, ge=0)
    images: int = Field(0, ge=0)
    image_bytes: int = Field(0, ge=0)
    upload_bytes: int = Field(0, ge=0)

    def plus(self, change: Amounts) -> Usage:
        """This usage with `change` added; a resource that would go below zero stays at zero and is
        logged: the usage drifted from the records (`recount` repairs it)."""
        new: dict[str, Any] = {}
        for name, amount in change.items():
            # Rounded: a VM recorded before the API took only whole MiB (0.1 GiB) must not leave
            # float dust that later looks like a negative usage.
            total = round(getattr(self, name) + amount, 9)
            if total < 0:
                log.warning("usage of %s: %s would go below zero (%s %+g); kept at 0, recount it", self.user, name,
                            getattr(self, name), amount)
                total = 0
            new[name] = total
        return self.evolve(**new)


QUOTAS: Family[Quota] = Family("/v1/quota/", Quota, identity="user")
USAGES: Family[Usage] = Family("/v1/usage/", Usage, identity="user")


class QuotaExceeded(Exception):
    """A change refused because it would take a user's usage of `resource` past their quota: nothing
    was written, and retrying is useless until the user holds less or an admin raises the quota."""

    def __init__(self, user: str, resource: Resource, limit: float, usage: float, asked: float) -> None:
        super().__init__(f"quota {resource.name} ({resource.what}) of user {user} exceeded: {resource.shown(usage)} "
                         f"used of {resource.shown(limit)}, and this needs {resource.shown(asked)} more; delete some, "
                         "or ask an admin for a larger quota")
        self.user = user
        self.resource = resource
        self.limit = limit
        self.usage = usage
        self.asked = asked


def cost(record: VM | Image | File | None) -> dict[str, float]:
    """What `record` counts against its owner's quota (nothing for None)."""
    if isinstance(record, VM):
        specs = record.specs
        return {"vms": 1, "cpu": specs.cpu, "ram": specs.ram, "ssd": specs.ssd, "hdd": specs.hdd}
    if isinstance(record, Image):
        return {"images": 1, "image_bytes": record.size}
    if isinstance(record, File):
        return {"upload_bytes": record.size}
    return {}


def change(before: VM | Image | File | None, after: VM | Image | File | None) -> dict[str, float]:
    """The usage change of writing `after` where `before` was (None: created, or removed): the change a
    resize or an upload charges too."""
    old, new = cost(before), cost(after)
    return {name: new.get(name, 0) - old.get(name, 0) for name in {**old, **new}
            if new.get(name, 0) != old.get(name, 0)}


def limits(store: AbstractStore, user: str) -> dict[str, float]:
    """The user's quota of every resource: the admin's, or the settings' default."""
    found = store.get(QUOTAS, user)
    return {r.name: (getattr(found.value, r.name) if found is not None and getattr(found.value, r.name) is not None
                     else getattr(store.settings, r.setting) * r.scale) for r in RESOURCES}


def counted(store: AbstractStore, user: str) -> Usage:
    """The user's usage as the records say: the sum of `cost` over their VMs, images and files."""
    total: dict[str, float] = {}
    for family in (VMS, IMAGES, FILES):
        for item in store.list(family, where={"owner": user}).items.values():
            for name, amount in cost(item.value).items():
                total[name] = total.get(name, 0) + amount
    return Usage(user=user, **total)


def usage(store: AbstractStore, user: str) -> tuple[Usage, int]:
    """The user's usage and the mod_revision to compare-and-swap it on (0: no record yet, counted)."""
    found = store.get(USAGES, user)
    return (found.value, found.mod_revision) if found is not None else (counted(store, user), 0)


def room(store: AbstractStore, user: str, resource: str) -> int:
    """How much of `resource` the user may still take (0 when over a lowered quota)."""
    return max(0, int(limits(store, user)[resource] - getattr(usage(store, user)[0], resource)))


def check(user: str, held: Usage, most: Mapping[str, float], asked: Amounts) -> None:
    """QuotaExceeded for the first resource that `asked` grows past its quota. Only growth is checked:
    a user over a quota an admin lowered may still shrink, or change what stays within it."""
    for name, amount in asked.items():
        if amount > 0 and getattr(held, name) + amount > most[name]:
            raise QuotaExceeded(user, BY_NAME[name], most[name], getattr(held, name), amount)


def charged(store: AbstractStore, user: str, asked: Amounts, *, enforce: bool = True) -> Put[Usage]:
    """The write that adds `asked` (e.g. `change(before, after)`) to `user`'s usage: a Put expecting the
    usage record as read now, to be written in the same transaction as the records that cause it, so
    that the transaction fails as a whole (Conflict) if anyone changed the usage meanwhile — re-read
    and build it again, as after any lost compare-and-swap.

    With `enforce`, raises QuotaExceeded (before writing anything) if `asked` would grow a resource
    past the quota. Without, the usage is only counted: for what already exists and cannot be refused
    (a file on the upload disk), or was checked before it was made (an image's bytes).

    The quota itself is read outside the transaction: a creation that races an admin lowering it
    passes as if it came just before (lowering a quota never takes anything away)."""
    held, revision = usage(store, user)
    if enforce:
        check(user, held, limits(store, user), asked)
    return Put(USAGES, user, held.plus(asked), revision)


def charging(user: str) -> AbstractContextManager[None]:
    """Held while writing a charge to `user`'s usage (`charged`): one user's charges are written one
    at a time in this process. Each changes the usage record, and sixteen threads of one user racing
    for it (a tool creating VMs with parallelism 16) lost to each other until some ran out of
    attempts (409 busy for 27 of 400 creations through the API). Only other processes race for it now."""
    return _charging.held(user)


def transact_counted(store: AbstractStore, user: str,
                     build: Callable[[], tuple[Sequence[Put[Any] | Remove[Any]], Amounts] | None], *,
                     enforce: bool = True) -> int | None:
    """Write what `build()` returns — the writes, and their usage change to `user` — in one transaction
    with `charged`; `build` reads afresh and runs again after a lost race (of its writes or of the
    usage), at most `cas_attempts` times (then Conflict). None from `build`: nothing to write (None
    returned). Raises QuotaExceeded as `charged`. One at a time per user in this process (`charging`)."""
    with charging(user):
        for _ in sleeps(_RETRY, attempts=store.settings.cas_attempts):
            built = build()
            if built is None:
                return None
            writes, asked = built
            try:
                return store.transact([*writes, charged(store, user, asked, enforce=enforce)])
            except Conflict:
                continue
    raise Conflict(f"gave up writing with {user}'s usage after {store.settings.cas_attempts} attempts: it kept "
                   "changing; retry later", USAGES.key(user))


def recount(store: AbstractStore, user: str, also: Callable[[Usage | None, Usage], Sequence[Put[Any]]]
            ) -> tuple[Usage | None, Usage]:
    """Set the user's usage to what the records say (an admin's repair of a usage that drifted), with
    `also(before, after)` in the same transaction (the event that tells of it); return both. The usage
    is read before the records are listed, so that a creation or deletion committed meanwhile changes
    it and makes this compare-and-swap fail (and recount again) instead of being lost."""
    for _ in sleeps(_RETRY, attempts=store.settings.cas_attempts):
        found = store.get(USAGES, user)
        before = found.value if found else None
        fresh = counted(store, user)
        try:
            store.transact([Put(USAGES, user, fresh, found.mod_revision if found else 0), *also(before, fresh)])
        except Conflict:
            continue
        return before, fresh
    raise Conflict(f"gave up recounting {user}'s usage: it kept changing; retry later", USAGES.key(user))
