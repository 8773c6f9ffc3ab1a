"""`GET /api/v1/vms/<uuid>/guacamole`: what a Guacamole deployment needs to show a VM's screen —
guacamole-auth-json's connection definition for the VM's TCP VNC server (its host's agent records
it, see UCLOUD_GUACAMOLE_VNC_ADDRESS), and, with UCLOUD_GUACAMOLE_SECRET_KEY, the signed and
encrypted login data Guacamole takes as `?data=` (see `ucloud_api.guacamole`)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ucloud_api import guacamole
from ucloud_api.auth import current
from ucloud_api.errors import APIError
from ucloud_api.replies import lookup_own, store
from ucloud_common import clock
from ucloud_common.console import SHOWN
from ucloud_common.vm import VMS

bp = Blueprint("guacamole", __name__, url_prefix="/api/v1/vms")


@bp.get("/<uuid>/guacamole")
def connection(uuid: str) -> Response:
    vm = lookup_own(VMS, uuid, f"VM {uuid}").value
    if vm.status not in SHOWN or not vm.host:
        raise APIError(409, "conflict", f"the VM is {vm.status}: start it first", vm_status=vm.status.value)
    if vm.guacamole is None:
        raise APIError(409, "conflict", f"the VM has no VNC server for Guacamole: its host {vm.host} offers none "
                       "(UCLOUD_GUACAMOLE_VNC_ADDRESS unset there: ask the operator), or the VM started before it "
                       "was set or while all its ports were taken (shut it down and start it again)",
                       vm_status=vm.status.value)
    expires_ms = int((clock.now() + guacamole.LOGIN_VALID_S) * 1000)
    document = guacamole.definition(current().name, vm.name, vm.guacamole, expires_ms)
    key = store().settings.guacamole_secret_key
    data = guacamole.sealed(document, key) if key else None
    response = jsonify({"definition": document, "expires_in": guacamole.LOGIN_VALID_S, "data": data,
                        "query": guacamole.login_query(data) if data else None})
    # It holds the VM's VNC password: no cache keeps it. (Never logged: the access log has the path only.)
    response.headers["Cache-Control"] = "no-store"
    return response
