"""Hosts (admin): capacity, what is allocated on them, liveness, and maintenance."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import Blueprint, Response, jsonify

from ucloud_api.auth import require_admin
from ucloud_api.body import parse
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import Maintenance
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host
from ucloud_common.states import Status
from ucloud_common.store import Versioned
from ucloud_common.vm import VMS

bp = Blueprint("hosts", __name__, url_prefix="/api/v1/hosts")

# A VM holds its host's resources in every status but these (it may be started there again).
_FREES_HOST = frozenset({Status.REQUESTED_NEW, Status.KILLED})


def _allocations() -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"cpu": 0, "ram": 0.0, "ssd": 0, "hdd": 0})
    for item in store().list(VMS).items.values():
        vm = item.value
        if vm.hostname and vm.status not in _FREES_HOST:
            for field in ("cpu", "ram", "ssd", "hdd"):
                totals[vm.hostname][field] += getattr(vm.specs, field)
    return totals


def _describe(host: Versioned[Host], alive: set[str], allocations: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {**dump(host.value), "alive": host.name in alive,
            "allocated": allocations.get(HOSTS.key(host.name), {"cpu": 0, "ram": 0.0, "ssd": 0, "hdd": 0})}


@bp.get("")
def list_() -> Response:
    require_admin()
    alive = set(store().list(HOSTS_ALIVE).items)
    allocations = _allocations()
    return jsonify([_describe(h, alive, allocations) for h in store().list(HOSTS).items.values()])


@bp.get("/<name>")
def get(name: str) -> Response:
    require_admin()
    host = lookup(HOSTS, name, f"host {name}")
    alive = {name} if store().get(HOSTS_ALIVE, name) else set()
    return object_reply(host, body=_describe(host, alive, _allocations()))


@bp.post("/<name>/maintenance")
def maintenance(name: str) -> Response:
    require_admin()
    check_if_match(lookup(HOSTS, name, f"host {name}"))
    on = parse(Maintenance).on
    updated = store().update(HOSTS, name, lambda h: None if h.maintenance == on else h.evolve(maintenance=on))
    return object_reply(updated)
