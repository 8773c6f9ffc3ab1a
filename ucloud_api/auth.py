"""API tokens: `Authorization: Bearer <id>.<secret>`, checked against the salted hash in etcd.

A token's text is shown once, in the answer that creates it, and never logged or stored: etcd holds
its salted hash (which is why `POST /api/v1/tokens` and `/login` take no Idempotency-Key: a kept reply
would store the text; nor does `POST /users`, for its first token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app, g, request

from ucloud_api.errors import APIError
from ucloud_api.passwords import hash_password
from ucloud_common.record import check_key_part, utcnow
from ucloud_common.store import Conflict, Put, Store
from ucloud_common.user import PASSWORDS, TOKENS, USERS, Password, Role, Token, User, check_user_name

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


def new_token(user: str, name: str = "initial", expires_at: datetime | None = None) -> tuple[str, str, Token]:
    """A fresh token: (its id, the text to hand out once, the record to store)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    token = Token(user=user, salt=salt, sha256=_digest(salt, secret), name=name, expires_at=expires_at)
    return token_id, f"{token_id}.{secret}", token


def forget(token_id: str) -> None:
    """Drop a revoked token from this process's cache (other API processes: within CACHE_SECONDS)."""
    authenticator: Authenticator = current_app.extensions["ucloud.auth"]
    authenticator.forget(token_id)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        # text → (when checked, until when it works, the caller)
        self._cache: dict[str, tuple[float, datetime | None, Caller]] = {}
        self._lock = threading.Lock()

    def caller(self) -> Caller:
        """The authenticated caller of this request, or 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text:
            raise APIError(401, "unauthenticated", "send 'Authorization: Bearer <token>'")
        return self.of(text)

    def of(self, text: str) -> Caller:
        """The caller whose token `text` is (from a header, or the console site's cookie), or 401."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(text)
        if cached and now - cached[0] < CACHE_SECONDS and not _expired(cached[1]):
            return cached[2]
        expires_at, caller = self._check(text.strip())
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[text] = (now, expires_at, caller)
        return caller

    def forget(self, token_id: str) -> None:
        with self._lock:
            for text in [t for t in self._cache if t.strip().partition(".")[0] == token_id]:
                del self._cache[text]

    def _check(self, text: str) -> tuple[datetime | None, Caller]:
        refused = APIError(401, "unauthenticated", "the token is not valid")
        token_id, _, secret = text.partition(".")
        try:
            check_key_part(token_id)
        except ValueError:
            raise refused from None
        token = self._store.get(TOKENS, token_id)
        if token is None or not hmac.compare_digest(token.value.sha256, _digest(token.value.salt, secret)):
            raise refused
        if _expired(token.value.expires_at):
            raise APIError(401, "unauthenticated", "the token has expired")
        user = self._store.get(USERS, token.value.user)
        if user is None or user.value.deleting:  # a user being deleted makes nothing new meanwhile
            raise refused
        return token.value.expires_at, Caller(user.value.name, user.value.role)


def _expired(expires_at: datetime | None) -> bool:
    return expires_at is not None and expires_at <= utcnow()


def current() -> Caller:
    caller: Caller = g.caller
    return caller


def require_admin() -> Caller:
    caller = current()
    if not caller.is_admin:
        raise APIError(403, "forbidden", "this needs an admin")
    return caller


def create_user(store: Store, name: str, role: Role, password: str | None = None,
                also: Sequence[Put[Any]] = ()) -> tuple[User, str]:
    """Create a user, its first token (returned as text, to be shown once) and its password, if
    given, and `also` (the event that tells of it). Atomic. ValueError for a name a new user cannot
    have, 409 if it is taken."""
    user = User(name=check_user_name(name), role=role)
    token_id, text, token = new_token(name)
    writes: list[Put[Any]] = [Put(USERS, name, user, 0), Put(TOKENS, token_id, token, 0), *also]
    if password is not None:
        writes.append(Put(PASSWORDS, name, Password(argon2=hash_password(password)), 0))
    try:
        store.transact(writes)
    except Conflict:
        raise APIError(409, "exists", f"user {name} already exists") from None
    return user, text

