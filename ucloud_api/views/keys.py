"""A user's SSH public keys, kept in the user's record."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify

from ucloud_api.audit import told
from ucloud_api.auth import current
from ucloud_api.body import parse
from ucloud_api.errors import APIError, not_found
from ucloud_api.idempotency import idempotent
from ucloud_api.limits import SSH_KEYS_PER_USER
from ucloud_api.replies import store
from ucloud_api.schemas import SSHKeyCreate
from ucloud_common.event import Kind
from ucloud_common.store import NotFound
from ucloud_common.user import USERS, User

bp = Blueprint("keys", __name__, url_prefix="/api/v1/ssh-keys")


@bp.post("")
@idempotent
def add() -> Response:
    body = parse(SSHKeyCreate)

    def with_key(user: User) -> User:
        if body.name in user.ssh_keys:
            raise APIError(409, "exists", f"you already have a key named {body.name}")
        SSH_KEYS_PER_USER.check(len(user.ssh_keys))
        return user.evolve(ssh_keys={**user.ssh_keys, body.name: body.key})

    _update(with_key, f"add SSH key {body.name}")
    response = jsonify({"name": body.name, "key": body.key})
    response.status_code = 201
    return response


@bp.get("")
def list_() -> Response:
    user = store().get(USERS, current().name)
    keys = user.value.ssh_keys if user else {}
    return jsonify([{"name": name, "key": key} for name, key in sorted(keys.items())])


@bp.delete("/<name>")
def delete(name: str) -> Response:
    def without_key(user: User) -> User:
        if name not in user.ssh_keys:
            raise not_found(f"SSH key {name}")
        return user.evolve(ssh_keys={k: v for k, v in user.ssh_keys.items() if k != name})

    _update(without_key, f"delete SSH key {name}")
    return Response(status=204)


def _update(change: Callable[[User], User], asked: str) -> None:
    name = current().name
    try:
        store().update(USERS, name, change, also=[told(Kind.USER, name, asked)])
    except NotFound:
        raise APIError(401, "unauthenticated", "your user no longer exists") from None
