"""The OpenAPI 3.1 document, built from the request and record models, so it cannot drift from them.

Every route of the app must be described in `ROUTES` (a test checks it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Flask
from pydantic import BaseModel

from ucloud_api.cache import CONTINUE_HEADER, MAX_LIMIT, REVISION_HEADER
from ucloud_api.idempotency import IDEMPOTENCY_KEY_SCHEMA
from ucloud_api.views.events import LIMIT_MAX
from ucloud_api.schemas import (
    Attachment,
    ConsoleRequest,
    ImageCreate,
    Maintenance,
    Login,
    Migrate,
    NetworkCreate,
    PasswordChange,
    QuotaUpdate,
    Resize,
    SSHKeyCreate,
    TokenCreate,
    UserCreate,
    VMCreate,
)
from ucloud_common.event import Event, Kind
from ucloud_common.file import File
from ucloud_common.host import Host
from ucloud_common.image import Image
from ucloud_common.network import Network
from ucloud_common.record import KEY_PART_MAX, NAME_PATTERN, NAME_SCHEMA
from ucloud_common.states import Action, Status
from ucloud_common.user import User
from ucloud_common.vm import VM
from ucloud_common.uploads import NAME_MAX_BYTES, NAME_PATTERN as UPLOAD_NAME_PATTERN
from ucloud_common.vmstats import VMStats


@dataclass(frozen=True)
class Route:
    summary: str
    body: type[BaseModel] | None = None
    ok: int = 200
    returns: str | None = None  # a schema name, "[Name]" for a list of them
    admin: bool = False
    errors: tuple[int, ...] = ()
    idempotent: bool = False  # takes an Idempotency-Key (a new key past the user's cap: 429)
    if_match: bool = False  # honours If-Match (a stale or malformed one: 412)
    query: tuple[str, ...] = ()  # filters, each a name of `_QUERY_SCHEMAS`
    media_type: str = "application/json"  # of the answer's body
    upload: bool = False  # the body is the bytes of a file (application/octet-stream), streamed
    paged: bool = False  # a list from the worker's cache: ?limit=&continue=, its revision (ucloud_api.cache)


ROUTES: dict[tuple[str, str], Route] = {
    ("get", "/healthz"): Route("Whether etcd is reachable", returns="Health", errors=(503,)),
    ("get", "/api/v1/openapi.json"): Route("This document", returns="Object"),
    ("get", "/metrics"): Route("Prometheus metrics of the API (all workers) and its etcd calls, in Prometheus' "
                               "text format", returns="Text", media_type="text/plain"),
    ("post", "/api/v1/users"): Route("Create a user; the answer holds its token, shown once", UserCreate, 201,
                                     "NewUser", admin=True, errors=(409, 422)),
    ("get", "/api/v1/users"): Route("List users", returns="[User]", admin=True),
    ("get", "/api/v1/users/{name}"): Route("Read a user (admin); `me`: your own record, with `quota`, your quota and "
                                           "usage of each resource", returns="User", errors=(404,)),
    ("put", "/api/v1/users/{name}/password"): Route(
        "Set a user's password: your own (with current_password if you have one) or, as an admin, anyone's",
        PasswordChange, 204, errors=(403, 404, 409, 422, 429)),
    ("get", "/api/v1/users/{name}/quota"): Route("A user's quota and usage of each resource (your own: name `me`; "
                                                 "an admin: anyone's)", returns="Quota", errors=(404,)),
    ("put", "/api/v1/users/{name}/quota"): Route("Set the resources of a user's quota the body names (null: back to "
                                                 "the default)", QuotaUpdate, returns="Quota", admin=True,
                                                 errors=(404, 409, 422)),
    ("post", "/api/v1/users/{name}/quota/recount"): Route("Recount a user's usage from their VMs, images and files "
                                                          "(the repair of a usage that drifted)", returns="Quota",
                                                          admin=True, errors=(404, 409)),
    ("post", "/api/v1/login"): Route("Log in with a name and password; the answer holds a token that works "
                                     "login_token_hours, shown once", Login, 201, "NewToken", errors=(401, 409, 422, 429)),
    ("post", "/api/v1/tokens"): Route("Create one of your API tokens; the answer holds it, shown once", TokenCreate,
                                      201, "NewToken", errors=(409, 422)),
    ("get", "/api/v1/tokens"): Route("List your API tokens (an admin: ?user=<name> for another's)", returns="[Token]",
                                     query=("user",)),
    ("delete", "/api/v1/tokens/{token_id}"): Route("Revoke one of your API tokens (an admin: anyone's)", ok=204,
                                                   errors=(404,)),
    # 409: the user still owns something (the answer lists it); 202: ?cascade=true and VMs are still going.
    ("delete", "/api/v1/users/{name}"): Route(
        "Delete a user who owns nothing (with its tokens, SSH keys and upload folder); ?cascade=true: with all it "
        "owns, 202 saying what is still going until the user is gone (repeat the request until 204)", ok=202,
        returns="UserDeletion", admin=True, errors=(204, 404, 409), if_match=True, query=("cascade",)),
    ("post", "/api/v1/vms"): Route("Create a VM", VMCreate, 201, "VM", errors=(409, 422), idempotent=True),
    ("get", "/api/v1/vms"): Route("List your VMs (an admin: all, filtered by owner, host, status)", returns="[VM]",
                                  query=("owner", "host", "status"), paged=True),
    ("get", "/api/v1/vms/{uuid}"): Route("Read a VM with its last events", returns="VM", errors=(404,)),
    ("get", "/api/v1/vms/{uuid}/events"): Route("A VM's event log", returns="[Event]", errors=(404,)),
    ("get", "/api/v1/events"): Route("Events of all objects, or of one (object=vm:<uuid>, user:<name>, host:<name>, "
                                     "network:<uuid>, image:<uuid>), also of deleted ones, oldest first, after "
                                     "`since`, at most `limit` (or more of the last one's time: page on with "
                                     "`since` = its created_at)", returns="[Event]", admin=True,
                                     query=("object", "since", "limit")),
    ("get", "/api/v1/vms/{uuid}/stats"): Route(
        "A running VM's CPU time, resident memory, disk and network I/O (totals since its QEMU started), as its "
        "host's agent last measured them (409 while no QEMU runs it)", returns="VMStats", errors=(404, 409)),
    # 204: a VM no host has taken yet goes at once; 202: its host is asked to delete it.
    ("delete", "/api/v1/vms/{uuid}"): Route("Delete a VM", ok=202, returns="VM", errors=(204, 404, 409),
                                            if_match=True),
    ("post", "/api/v1/vms/{uuid}/{action}"): Route(
        "Ask a VM to start, shutdown, reboot, suspend, resume or migrate (migrate: admin, optional body)",
        Migrate, 202, "VM", errors=(403, 404, 405, 409, 422), idempotent=True, if_match=True),
    # 403: migrate is for admins; 405: "delete" is DELETE /vms/{uuid}; 422: migrate to no such host
    ("post", "/api/v1/vms/{uuid}/resize"): Route(
        "Ask for new specs for a STOPPED VM (disks only grow): the scheduler writes them into its specs if its host "
        "has room, else says why in its error; the disks grow at its next start", Resize, 202, "VM",
        errors=(404, 409, 422), idempotent=True, if_match=True),
    ("delete", "/api/v1/vms/{uuid}/migration"): Route(
        "Cancel the VM's migration, asked or under way: it stays on (or returns to) its host", ok=202, returns="VM",
        admin=True, errors=(404, 409)),
    ("post", "/api/v1/vms/{uuid}/console"): Route(
        "A one-time ticket (60 s) for the VM's screen (vnc) or serial console, and the websocket URL of "
        "its host's console proxy that takes it", ConsoleRequest, 201, "ConsoleTicket", errors=(404, 409, 422)),
    ("get", "/api/v1/vms/{uuid}/guacamole"): Route(
        "The VM's VNC server on TCP as guacamole-auth-json's connection definition (it holds the VNC password), "
        "and, where the operator set guacamole_secret_key, the signed and encrypted login data for Guacamole's "
        "?data=", returns="GuacamoleConnection", errors=(404, 409)),
    ("post", "/api/v1/networks"): Route("Create a network (VXLAN)", NetworkCreate, 201, "Network", errors=(409, 422),
                                   idempotent=True),
    ("get", "/api/v1/networks"): Route("List your networks", returns="[Network]", paged=True),
    ("get", "/api/v1/networks/{uuid}"): Route("Read a network", returns="Network", errors=(404,)),
    ("delete", "/api/v1/networks/{uuid}"): Route("Delete a network no VM uses", ok=204, errors=(404, 409),
                                                 if_match=True),
    ("post", "/api/v1/networks/{uuid}/attach"): Route("Attach a VM to the network", Attachment, 202, "VM",
                                                      errors=(404, 409, 422), idempotent=True, if_match=True),
    ("post", "/api/v1/networks/{uuid}/detach"): Route("Detach a VM from the network", Attachment, 202, "VM",
                                                      errors=(404, 409, 422), idempotent=True, if_match=True),
    ("post", "/api/v1/ssh-keys"): Route("Add an SSH public key", SSHKeyCreate, 201, "SSHKey", errors=(409, 422),
                                        idempotent=True),
    ("get", "/api/v1/ssh-keys"): Route("List your SSH keys", returns="[SSHKey]"),
    ("delete", "/api/v1/ssh-keys/{name}"): Route("Delete an SSH key", ok=204, errors=(404,)),
    ("get", "/api/v1/files"): Route("List your uploaded files (registered by file-scan)", returns="[File]",
                                        paged=True),
    ("put", "/api/v1/files/{filename}"): Route(
        "Upload a file into your upload folder, streamed (file-scan registers it on its next run); ?replace=true "
        "replaces one of that name", ok=201, returns="Upload", errors=(409, 507), query=("replace",),
        upload=True),
    ("post", "/api/v1/images"): Route("Create an image from one of your files", ImageCreate, 201, "Image",
                                      errors=(409, 422), idempotent=True),
    ("get", "/api/v1/images"): Route("List public images and yours", returns="[Image]", paged=True),
    ("get", "/api/v1/image-stores"): Route("List the image stores (local directory or Ceph pool)",
                                           returns="[ImageStore]"),
    ("get", "/api/v1/images/{uuid}"): Route("Read an image", returns="Image", errors=(404,)),
    ("delete", "/api/v1/images/{uuid}"): Route("Delete your image", ok=204, errors=(404, 409), if_match=True),
    ("get", "/api/v1/hosts"): Route("List hosts with capacity, allocation and liveness", returns="[HostView]", paged=True,
                                    admin=True),
    ("get", "/api/v1/hosts/{name}"): Route("Read a host", returns="HostView", admin=True, errors=(404,)),
    ("post", "/api/v1/hosts/{name}/maintenance"): Route("Turn maintenance on or off (drain: move its VMs away)",
                                                        Maintenance, returns="HostView", admin=True,
                                                        errors=(404, 422), if_match=True),
    ("delete", "/api/v1/hosts/{name}"): Route("Forget a host that holds no VM and is DOWN or in maintenance", ok=204,
                                              admin=True, errors=(404, 409), if_match=True),
}

UNCHECKED = ("/healthz", "/api/v1/openapi.json", "/metrics")  # no body, no store writes: only a 503
PUBLIC = (*UNCHECKED, "/api/v1/login")  # no token needed

SCHEMAS: dict[str, type[BaseModel]] = {
    "VM": VM, "User": User, "Event": Event, "Network": Network, "File": File, "Image": Image, "Host": Host,
    "VMStats": VMStats,
}


# The names in paths are keys: a name that cannot be one is a 404, as nothing can be stored under it.
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": NAME_SCHEMA, "uuid": NAME_SCHEMA, "token_id": NAME_SCHEMA,
    "filename": {"type": "string", "minLength": 1, "maxLength": NAME_MAX_BYTES, "pattern": UPLOAD_NAME_PATTERN},
    # "delete" is an action too, but DELETE /vms/{uuid} asks for it (POST answers 405); resize has a path of its own
    "action": {"type": "string", "enum": [a.value for a in Action if a not in (Action.DELETE, Action.RESIZE)]},
}


_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "user": NAME_SCHEMA, "owner": NAME_SCHEMA, "host": NAME_SCHEMA,
    "status": {"type": "string", "enum": [s.value for s in Status]},
    "object": {"type": "string", "pattern": f"^({'|'.join(Kind)}):" + NAME_PATTERN[1:], "maxLength": KEY_PART_MAX},
    "since": {"type": "string", "format": "date-time"},
    "limit": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX},
    "replace": {"type": "boolean"}, "cascade": {"type": "boolean"},
}


def _ref(name: str) -> dict[str, Any]:
    if name.startswith("["):
        return {"type": "array", "items": _ref(name[1:-1])}
    if name == "Object":
        return {"type": "object"}
    if name == "Text":
        return {"type": "string"}
    return {"$ref": f"#/components/schemas/{name}"}


def _error_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    }}}


_REVISION_SCHEMA = {"type": "string", "pattern": "^[0-9]{1,20}$"}
_PAGE_PARAMETERS = [
    {"name": "limit", "in": "query", "required": False, "description": "at most this many items (else all)",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
    {"name": "continue", "in": "query", "required": False,
     "description": f"the previous page's {CONTINUE_HEADER}, as it is: the items after its last one, in key order",
     "schema": {"type": "string"}},
    {"name": REVISION_HEADER, "in": "header", "required": False, "schema": _REVISION_SCHEMA,
     "description": "a revision an answer gave (a write's): this answer reflects it or a later one"},
]
_PAGE_HEADERS = {
    REVISION_HEADER: {"description": "etcd's revision this answer reflects (a write's: its own)",
                      "schema": _REVISION_SCHEMA},
    CONTINUE_HEADER: {"description": "more follow: send it back as ?continue= for the next page",
                      "schema": {"type": "string"}},
}


def document(app: Flask) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _error_schema()}
    paths: dict[str, dict[str, Any]] = {}
    bodies = (VMCreate, Migrate, Resize, UserCreate, NetworkCreate, Attachment, SSHKeyCreate, ImageCreate,
              Maintenance, PasswordChange, Login, TokenCreate, ConsoleRequest, QuotaUpdate)
    for model_name, model in {**SCHEMAS, **{m.__name__: m for m in bodies}}.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        components.update(schema.pop("$defs", {}))
        components[model_name] = schema
    components["NewUser"] = {"allOf": [_ref("User"), {"type": "object", "required": ["token"],
                                                      "properties": {"token": {"type": "string"}}}]}
    components["Token"] = {"type": "object", "required": ["id", "name", "user", "created_at", "expires_at"],
                           "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                          "user": {"type": "string"},
                                          "created_at": {"type": "string", "format": "date-time"},
                                          "expires_at": {"type": ["string", "null"], "format": "date-time"}}}
    components["NewToken"] = {"allOf": [_ref("Token"), {"type": "object", "required": ["token"],
                                                        "properties": {"token": {"type": "string"}}}]}
    components["SSHKey"] = {"type": "object", "required": ["name", "key"],
                            "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}
    components["HostView"] = {"allOf": [_ref("Host"), {"type": "object", "properties": {
        "alive": {"type": "boolean"}, "allocated": {"type": "object"},
        "vms": {"type": "integer", "description": "VMs placed on it or migrating to it"}}}]}
    components["ImageStore"] = {"type": "object", "required": ["name", "type"], "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["local", "rbd"]}}}
    components["ConsoleTicket"] = {"type": "object", "required": ["ticket", "type", "url", "page", "expires_in"],
                                   "properties": {"ticket": {"type": "string"}, "url": {"type": "string"},
                                                  "page": {"type": "string", "description": "the console "
                                                           "site's page that opens `url`"},
                                                  "type": {"type": "string", "enum": ["vnc", "serial"]},
                                                  "expires_in": {"type": "integer"}}}
    components["GuacamoleConnection"] = {
        "type": "object", "required": ["definition", "expires_in", "data", "query"], "properties": {
            "definition": {"type": "object", "required": ["username", "expires", "connections"], "properties": {
                "username": {"type": "string"}, "expires": {"type": "integer"},
                "connections": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["protocol", "parameters"], "properties": {
                        "protocol": {"type": "string", "enum": ["vnc"]},
                        "parameters": {"type": "object", "required": ["hostname", "port", "password"],
                                       "additionalProperties": {"type": "string"}}}}}}},
            "expires_in": {"type": "integer"},
            "data": {"type": ["string", "null"]}, "query": {"type": ["string", "null"]}}}
    components["Upload"] = {"type": "object", "required": ["owner", "filename", "size"], "properties": {
        "owner": {"type": "string"}, "filename": {"type": "string"}, "size": {"type": "integer"},
        "registered": {"type": "boolean"}, "note": {"type": "string"}}}
    components["UserDeletion"] = {"type": "object", "required": ["name", "deleting", "left"], "properties": {
        "name": {"type": "string"}, "deleting": {"type": "boolean"},
        "left": {"type": "object", "description": "what the user still owns, by kind: a count and some names",
                 "additionalProperties": {"type": "object", "properties": {
                     "count": {"type": "integer"}, "some": {"type": "array", "items": {"type": "string"}}}}}}}
    components["Quota"] = {"type": "object", "description": "each resource's usage and quota", "additionalProperties": {
        "type": "object", "required": ["used", "limit", "unit", "what", "set"], "properties": {
            "used": {"type": "number"}, "limit": {"type": "number"},
            "unit": {"type": "string", "description": "bytes, GiB, or what is counted"},
            "what": {"type": "string"},
            "set": {"type": "boolean", "description": "set by an admin (else the settings' default)"}}}}
    components["Health"] = {"type": "object", "properties": {"status": {"type": "string"}}}
    for (method, path), route in ROUTES.items():
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK"}
        if route.returns:
            ok["content"] = {route.media_type: {"schema": _ref(route.returns)}}
        responses[str(route.ok)] = ok
        generic = (503,) if path in UNCHECKED else (400, 413, 503) if path in PUBLIC else (400, 401, 403, 413, 503)
        for status in (*route.errors, *generic, *((429,) if route.idempotent else ()),
                       *((412,) if route.if_match else ())):
            if status == 204:  # not an error: a second success without a body
                responses["204"] = {"description": "OK, nothing more to say"}
                continue
            responses[str(status)] = {"description": "error",
                                      "content": {"application/json": {"schema": _ref("Error")}}}
        operation: dict[str, Any] = {"summary": route.summary + (" (admin)" if route.admin else ""),
                                     "responses": responses}
        parameters: list[dict[str, Any]] = [{"name": p, "in": "path", "required": True, "schema": _PATH_SCHEMAS[p]}
                                            for p in _path_parameters(path)]
        parameters += [{"name": q, "in": "query", "required": False, "schema": _QUERY_SCHEMAS[q]}
                       for q in route.query]
        if route.paged:
            parameters += _PAGE_PARAMETERS
            ok["headers"] = _PAGE_HEADERS
        elif method != "get":
            ok["headers"] = {REVISION_HEADER: _PAGE_HEADERS[REVISION_HEADER]}
        if route.idempotent:
            parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                               "description": "a retry with the same key gets the first answer, and nothing is "
                                              "done twice", "schema": IDEMPOTENCY_KEY_SCHEMA})
        parameters.append({"name": "X-Request-Id", "in": "header", "required": False,
                           "description": "this request's id, kept if it is 1-128 characters of letters, digits "
                                          "and ._:@=+/- starting with a letter or digit, else a new one is made; "
                                          "every answer carries it, and the events and logs of the request name it",
                           "schema": {"type": "string"}})
        if route.if_match:
            parameters.append({"name": "If-Match", "in": "header", "required": False,
                               "description": "the ETag read: refused with 412 if the object changed since",
                               # Any text: one that is no ETag of ours matches none, which is a 412 (RFC 9110)
                               "schema": {"type": "string"}})
        if parameters:
            operation["parameters"] = parameters
        if route.upload:
            operation["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}}}}
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.body is not Migrate,
                "content": {"application/json": {"schema": _ref(route.body.__name__)}},
            }
        if path not in PUBLIC:
            operation["security"] = [{"token": []}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ucloud API", "version": "1"},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    }


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


# `<name>` or `<converter(arguments):name>` in a Flask rule
_CONVERTED = re.compile(r"<(?:[^:<>]*:)?([^<>:]+)>")


def flask_routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves (the console site's pages are no API)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("site."):
            continue
        path = _CONVERTED.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method.lower(), path))
    return routes
