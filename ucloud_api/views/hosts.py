"""Hosts (admin): capacity, what is allocated on them, liveness, and maintenance."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ucloud_api.auth import require_admin
from ucloud_api.body import parse
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import Maintenance
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host
from ucloud_common.allocation import ZERO, allocations
from ucloud_common.specs import Specs
from ucloud_common.store import Versioned
from ucloud_common.vm import VMS

bp = Blueprint("hosts", __name__, url_prefix="/api/v1/hosts")

def _allocations() -> dict[str, Specs]:
    return allocations(vm.value for vm in store().list(VMS).items.values())


def _describe(host: Versioned[Host], alive: set[str], totals: dict[str, Specs]) -> dict[str, Any]:
    return {**dump(host.value), "alive": host.name in alive,
            "allocated": totals.get(host.name, ZERO).model_dump()}


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
