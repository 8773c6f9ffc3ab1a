"""API tokens: `Authorization: Bearer <id>.<secret>`, checked against the salted hash in etcd."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from flask import g, request

from ucloud_api.errors import APIError
from ucloud_common.record import check_key_part
from ucloud_common.store import Conflict, Put, Store
from ucloud_common.user import TOKENS, USERS, Role, Token, User, check_user_name

# How long a worker trusts a checked token without asking etcd again: a deleted user or token
# stops working within this, and a busy API does not read two keys for every request.
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def new_token(user: str) -> tuple[str, str, Token]:
    """A fresh token: (its id, the text to hand out once, the record to store)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return token_id, f"{token_id}.{secret}", Token(user=user, salt=salt, sha256=_digest(salt, secret))


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def caller(self) -> Caller:
        """The authenticated caller of this request, or 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text:
            raise APIError(401, "unauthenticated", "send 'Authorization: Bearer <token>'")
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(text)
        if cached and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        caller = self._check(text.strip())
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[text] = (now, caller)
        return caller

    def _check(self, text: str) -> Caller:
        refused = APIError(401, "unauthenticated", "the token is not valid")
        token_id, _, secret = text.partition(".")
        try:
            check_key_part(token_id)
        except ValueError:
            raise refused from None
        token = self._store.get(TOKENS, token_id)
        if token is None or not hmac.compare_digest(token.value.sha256, _digest(token.value.salt, secret)):
            raise refused
        user = self._store.get(USERS, token.value.user)
        if user is None:
            raise refused
        return Caller(user.value.name, user.value.role)


def current() -> Caller:
    caller: Caller = g.caller
    return caller


def require_admin() -> Caller:
    caller = current()
    if not caller.is_admin:
        raise APIError(403, "forbidden", "this needs an admin")
    return caller


def create_user(store: Store, name: str, role: Role) -> tuple[User, str]:
    """Create a user and its first token (returned as text, to be shown once). Atomic. ValueError
    for a name a new user cannot have, 409 if it is taken."""
    user = User(name=check_user_name(name), role=role)
    token_id, text, token = new_token(name)
    try:
        store.transact([Put(USERS, name, user, 0), Put(TOKENS, token_id, token, 0)])
    except Conflict:
        raise APIError(409, "exists", f"user {name} already exists") from None
    return user, text

