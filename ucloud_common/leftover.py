"""VMs deleted while their host was down: `/v1/leftover/<host>:<uuid>`, each the VM as it was.

A VM on local storage lives on one host's disk: while that host is DOWN (its lease expired: dead, or
cut off from etcd and perhaps still running the VM), nothing else can remove its disk or stop its
QEMU, and a deletion waiting for that host's agent would hold the VM's name, addresses and its
owner's usage for as long as the host stays away (for good, if it died). The API deletes such a VM at
once and leaves this record in the same transaction; the host's agent, back, removes what is left
of the VM there (process, NICs, disk, files) and then the record. Written only by the API; removed
only by that host's agent.
"""

from __future__ import annotations

from ucloud_common.record import Family, Name, Record
from ucloud_common.vm import VM


class Leftover(Record):
    host: Name
    vm: VM


LEFTOVERS: Family[Leftover] = Family("/v1/leftover/", Leftover)


def leftover_name(host: str, uuid: str) -> str:
    return f"{host}:{uuid}"


def leftovers_of(host: str) -> str:
    """The name prefix of one host's leftovers (for `Store.list(LEFTOVERS, within=...)`)."""
    return f"{host}:"
