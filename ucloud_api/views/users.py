"""Users (admin only)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ucloud_api.auth import create_user, require_admin
from ucloud_api.body import parse
from ucloud_api.idempotency import idempotent
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import UserCreate
from ucloud_common.store import Remove
from ucloud_common.user import TOKENS, USERS

bp = Blueprint("users", __name__, url_prefix="/api/v1/users")


@bp.post("")
@idempotent
def create() -> Response:
    require_admin()
    body = parse(UserCreate)
    user, token = create_user(store(), body.name, body.role)
    created = store().get(USERS, user.name)
    assert created is not None
    return object_reply(created, 201, {**dump(user), "token": token})


@bp.get("")
def list_() -> Response:
    require_admin()
    return jsonify([dump(u.value) for u in store().list(USERS).items.values()])


@bp.get("/<name>")
def get(name: str) -> Response:
    require_admin()
    return object_reply(lookup(USERS, name, f"user {name}"))


@bp.delete("/<name>")
def delete(name: str) -> Response:
    require_admin()
    user = lookup(USERS, name, f"user {name}")
    check_if_match(user)
    tokens = [t for t in store().list(TOKENS).items.values() if t.value.user == name]
    store().transact([Remove(USERS, name, user.mod_revision), *(Remove(TOKENS, t.name, None) for t in tokens)])
    return Response(status=204)

