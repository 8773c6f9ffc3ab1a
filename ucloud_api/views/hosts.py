"""Hosts (admin): capacity, what is allocated on them, liveness, and maintenance."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response

from ucloud_api.audit import told
from ucloud_api.auth import require_admin
from ucloud_api.body import parse
from ucloud_api.cache import cache, caught_up, compact_json, list_reply
from ucloud_api.errors import APIError
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import Maintenance
from ucloud_common.event import Kind
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostStatus
from ucloud_common.allocation import ZERO, allocations
from ucloud_common.record import Family, R
from ucloud_common.specs import Specs
from ucloud_common.store import Conflict, Remove, Versioned
from ucloud_common.vm import VMS, VM

bp = Blueprint("hosts", __name__, url_prefix="/api/v1/hosts")

def _allocations(vms: Iterable[VM] | None = None) -> dict[str, Specs]:
    return allocations(vms if vms is not None else (vm.value for vm in store().list(VMS).items.values()))


def _describe(host: Versioned[Host], alive: set[str], totals: dict[str, Specs], vms: int) -> dict[str, Any]:
    """A host as the API shows it: its record, liveness, what its VMs take, and how many it holds
    (placed there, or on their way there) — 0 once a drain has emptied it."""
    return {**dump(host.value), "alive": host.name in alive,
            "allocated": totals.get(host.name, ZERO).model_dump(), "vms": vms}


def _vms_on(vms: Iterable[VM] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for vm in vms if vms is not None else (vm.value for vm in store().list(VMS).items.values()):
        for name in {vm.host, vm.migration.target if vm.migration else ""} - {""}:
            counts[name] = counts.get(name, 0) + 1
    return counts


@bp.get("")
def list_() -> Response:
    require_admin()
    vms, alive = [vm.value for vm in _cached_all(VMS)], {h.name for h in _cached_all(HOSTS_ALIVE)}
    totals, counts = _allocations(vms), _vms_on(vms)
    return list_reply(HOSTS, lambda h: compact_json(_describe(h, alive, totals, counts.get(h.name, 0))))


def _cached_all(family: Family[R]) -> list[Versioned[R]]:
    """The whole family, from the cache when fresh (what the hosts' answers sum up)."""
    with caught_up(cache().mirror(family)).locked() as table:
        return list(table.items.values())


@bp.get("/<name>")
def get(name: str) -> Response:
    require_admin()
    host = lookup(HOSTS, name, f"host {name}")
    alive = {name} if store().get(HOSTS_ALIVE, name) else set()
    return object_reply(host, body=_summed_up(host, alive))


def _summed_up(host: Versioned[Host], alive: set[str]) -> dict[str, Any]:
    """`_describe` of what the cache holds of every VM (fresh for this request): a reply, never a
    decision, which reads etcd (`delete`). From two etcd listings of every VM, a GET of one host
    cost two listings of ~27 MB at 10,000 VMs."""
    vms = [vm.value for vm in _cached_all(VMS)]
    return _describe(host, alive, _allocations(vms), _vms_on(vms).get(host.name, 0))


@bp.post("/<name>/maintenance")
def maintenance(name: str) -> Response:
    require_admin()
    check_if_match(lookup(HOSTS, name, f"host {name}"))
    asked = parse(Maintenance)
    if asked.drain and not asked.on:
        raise APIError(422, "invalid", "drain: a host is drained only into maintenance (on: true)",
                       fields=[{"field": "drain", "message": "needs on: true"}])
    asking = "maintenance on, drain" if asked.drain else "maintenance on" if asked.on else "maintenance off"
    updated = store().update(HOSTS, name, lambda h: None if (h.maintenance, h.drain) == (asked.on, asked.drain)
                             else h.evolve(maintenance=asked.on, drain=asked.drain, drain_blocked={}),
                             also=[told(Kind.HOST, name, asking)])
    alive = {name} if store().get(HOSTS_ALIVE, name) else set()
    return object_reply(updated, body=_summed_up(updated, alive))


@bp.delete("/<name>")
def delete(name: str) -> Response:
    """Forget a host that holds no VM and is DOWN or in maintenance (its agent, started again,
    registers it again)."""
    require_admin()
    host = lookup(HOSTS, name, f"host {name}")
    check_if_match(host)
    held = _vms_on().get(name, 0)
    if held:
        raise APIError(409, "conflict", f"host {name} still holds {held} VMs: drain it first "
                       "(POST /api/v1/hosts/<name>/maintenance {\"on\": true, \"drain\": true}); a DOWN host's "
                       "VMs on local storage cannot move: DELETE /api/v1/vms/<uuid> deletes them at once", vms=held)
    if host.value.status is not HostStatus.DOWN and not host.value.maintenance:
        raise APIError(409, "conflict", f"host {name} is {host.value.status} and in service: put it in maintenance "
                       "or stop its agent first")
    try:
        store().transact([Remove(HOSTS, name, host.mod_revision), told(Kind.HOST, name, "forget the host")])
    except Conflict:
        raise APIError(409, "busy", f"host {name} changed meanwhile; read it again") from None
    return Response(status=204)
