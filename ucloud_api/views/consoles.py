"""`POST /api/v1/vms/<uuid>/console`: a one-time ticket for a VM's screen or serial console, and the
websocket URL of the console proxy on the VM's host that takes it (see `ucloud_common.console`), and the
console site's page that opens it (`ucloud_api.site`)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ucloud_api.audit import told
from ucloud_api.auth import current
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.replies import lookup_own, store
from ucloud_api.schemas import ConsoleRequest
from ucloud_common.console import PROXIES, SHOWN, TICKET_TTL, TICKETS, ConsoleKind, ConsoleTicket, new_ticket
from ucloud_common.event import Kind
from ucloud_common.store import Put
from ucloud_common.vm import VMS

bp = Blueprint("consoles", __name__, url_prefix="/api/v1/vms")



@bp.post("/<uuid>/console")
def ticket(uuid: str) -> Response:
    return issue(uuid, parse(ConsoleRequest).type)


def issue(uuid: str, kind: ConsoleKind) -> Response:
    """A ticket of the caller's for the VM's console (the API's route, and the console site's): the
    websocket URL that takes it, and the console site's page that opens that URL."""
    vm = lookup_own(VMS, uuid, f"VM {uuid}").value
    if vm.status not in SHOWN or not vm.host:
        raise APIError(409, "conflict", f"the VM is {vm.status}: start it first", vm_status=vm.status.value)
    proxy = store().get(PROXIES, vm.host)
    if proxy is None:
        raise APIError(503, "unavailable", f"no console proxy runs on host {vm.host}; ask the operator")
    issued, digest = new_ticket()
    ticket = ConsoleTicket(digest=digest, user=current().name, vm=vm.uuid, host=vm.host, kind=kind)
    store().transact([Put(TICKETS, digest, ticket, 0, lease=store().grant_lease(TICKET_TTL)),
                      told(Kind.VM, vm.uuid, f"open the {kind.value} console")])
    url = f"{proxy.value.url}/{kind.value}?ticket={issued}"
    # Never logged: the access log has the request's path, which holds no ticket; the answer is not logged,
    # and the page carries the URL in its fragment, which browsers send to no server.
    response = jsonify({"ticket": issued, "type": kind.value, "expires_in": TICKET_TTL, "url": url,
                        "page": f"{store().settings.public_url or request.host_url.rstrip('/')}/console/"
                                f"{kind.value}#{url}"})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response
