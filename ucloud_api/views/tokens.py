"""Users' own API tokens (create, list, revoke) and logging in with a password, which answers a token.

Every user manages their own tokens; an admin may also list and revoke another user's (`?user=`). A
token's text is in the answer that creates it and nowhere else. Another user's token answers 404, as
if it did not exist.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ucloud_api import ratelimit, throttle
from ucloud_api.audit import told
from ucloud_api.auth import Caller, current, forget, new_token
from ucloud_api.body import parse
from ucloud_api.errors import APIError, not_found
from ucloud_api.limits import TOKENS_PER_USER
from ucloud_api.passwords import check_password
from ucloud_api.replies import store
from ucloud_api.schemas import Login, TokenCreate
from ucloud_common.record import check_key_part, check_name, utcnow
from ucloud_common.event import Kind
from ucloud_common.store import Put, Remove, Store, Versioned
from ucloud_common.user import PASSWORDS, TOKENS, USERS, Role, Token

bp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens")
login_bp = Blueprint("login", __name__, url_prefix="/api/v1/login")


def mint_token(store: Store, user: str, name: str, lifetime: float | None,
               evict: bool = False, asked_by: str | None = None) -> tuple[str, Versioned[Token]]:
    """Store a new token of `user` (at most `max_tokens_per_user`, else 409 — or, with `evict`, their
    oldest token of the same name goes to make room) working for `lifetime` seconds (None: until
    revoked), on an etcd lease that deletes it a little after it stops working, told in the user's
    event log as asked by the caller (or `asked_by`, for a login). Returns the text, to be shown once,
    and the record."""
    held = store.list(TOKENS, where={"user": user}).items
    evicted: list[Versioned[Token]] = []
    if evict and len(held) >= store.settings.max_tokens_per_user:
        alike = sorted((t for t in held.values() if t.value.name == name), key=lambda t: t.create_revision)
        evicted = alike[:1]
    TOKENS_PER_USER.check(len(held) - len(evicted))
    expires_at = None if lifetime is None else utcnow() + timedelta(seconds=lifetime)
    token_id, text, token = new_token(user, name, expires_at)
    # A second more than the lifetime: the record, not the lease, says when it stops working.
    lease = None if lifetime is None else store.grant_lease(int(lifetime) + 1)
    revision = store.transact([*(write for old in evicted for write in revoked(old, " to make room", asked_by)),
                               Put(TOKENS, token_id, token, 0, lease=lease),
                               told(Kind.USER, user, f"create token {token_id} ({name})", user=asked_by)])
    for old in evicted:
        forget(old.name)
    return text, Versioned(token_id, token, revision, revision)


def revoked(token: Versioned[Token], why: str = "", asked_by: str | None = None) -> list[Put[Any] | Remove[Any]]:
    """The writes that revoke `token`, with its event in its user's log as asked by the caller (or
    `asked_by`: a login), then `forget` it."""
    return [Remove(TOKENS, token.name, None),
            told(Kind.USER, token.value.user, f"revoke token {token.name} ({token.value.name}){why}", user=asked_by)]


def shown(token: Versioned[Token]) -> dict[str, Any]:
    """What anyone is ever shown of a stored token: never its hash or salt."""
    value = token.value
    return {"id": token.name, "name": value.name, "user": value.user,
            "created_at": value.created_at.isoformat(),
            "expires_at": value.expires_at.isoformat() if value.expires_at else None}


def _created(text: str, token: Versioned[Token]) -> Response:
    response = jsonify({**shown(token), "token": text})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("")
def create() -> Response:
    body = parse(TokenCreate)
    text, token = mint_token(store(), current().name, body.name, body.expires_in)
    return _created(text, token)


@bp.get("")
def list_() -> Response:
    user = _whose()
    tokens = store().list(TOKENS, where={"user": user}).items.values()
    return jsonify(sorted((shown(t) for t in tokens), key=lambda t: t["created_at"]))


@bp.delete("/<token_id>")
def revoke(token_id: str) -> Response:
    """Revoke a token: it stops working at once in this API process, in the others as soon as their
    watch delivers the deletion (milliseconds)."""
    caller = current()
    try:
        check_key_part(token_id)
    except ValueError:
        raise not_found(f"token {token_id}") from None
    token = store().get(TOKENS, token_id)
    if token is None or (token.value.user != caller.name and not caller.is_admin):
        raise not_found(f"token {token_id}")
    store().transact(revoked(token))
    forget(token_id)
    return Response(status=204)


def _whose() -> str:
    caller = current()
    user = request.args.get("user", caller.name)
    try:
        check_name(user)
    except ValueError as exc:
        raise APIError(400, "bad_request", f"user: {exc}") from None
    if user != caller.name and not caller.is_admin:
        raise APIError(403, "forbidden", "only an admin may list another user's tokens")
    return user


@login_bp.post("")
def login() -> Response:
    """A name and password for a token that works `login_token_hours`."""
    body = parse(Login)
    text, token = log_in(store(), body.name, body.password, "login")
    return _created(text, token)


def log_in(the_store: Store, name: str, password: str, token_name: str,
           evict: bool = False) -> tuple[str, Versioned[Token]]:
    """A new token named `token_name` for the user whose password this is (the API's login, and the
    console site's session, which `evict`s the user's oldest session at the token limit). A wrong
    name and a wrong password are the same 401; failures are counted per name and per source address
    (see `throttle`)."""
    keys = throttle.subjects(name, request.remote_addr or "unknown")
    throttle.check_not_shut_out(the_store, keys)
    stored = the_store.get(PASSWORDS, name)
    if not check_password(stored.value.argon2 if stored else None, password):
        throttle.count_failure(the_store, keys)
        raise APIError(401, "unauthenticated", "wrong name or password")
    user = the_store.get(USERS, name)
    ratelimit.check_login(Caller(name, user.value.role if user else Role.USER))
    throttle.clear(the_store, keys[0])
    return mint_token(the_store, name, token_name, the_store.settings.login_token_hours * 3600, evict, asked_by=name)
