"""API tokens: `Authorization: Bearer <id>.<secret>`, checked against the salted hash in etcd.

A token's text is shown once, in the answer that creates it, and never logged or stored: etcd holds
its salted hash (which is why `POST /api/v1/tokens` and `/login` take no Idempotency-Key: a kept reply
would store the text; nor does `POST /users`, for its first token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app, g, request

from ucloud_api.cache import sent_revision
from ucloud_api.errors import APIError
from ucloud_api.passwords import hash_password
from ucloud_common.record import Family, R, check_key_part, utcnow
from ucloud_common.store import Conflict, Put, Store, Versioned
from ucloud_common.store.mirror import Mirror
from ucloud_common.user import PASSWORDS, TOKENS, USERS, Password, Role, Token, User, check_user_name


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
    """Refuse a token revoked through this process at once (the others refuse it as soon as their
    watch delivers its deletion)."""
    authenticator: Authenticator = current_app.extensions["ucloud.auth"]
    authenticator.forget(token_id)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class Authenticator:
    """Checks a token against its salted hash, reading the token and its user from the worker's
    mirrors (`ucloud_api.cache`): no etcd round trip per request. A token or user the mirror does not
    hold (made a moment ago through another worker, or the mirror not loaded yet) is read from etcd.
    A deleted token or user stops working here as soon as the watch delivers the deletion; at once
    when the client sends the revision of the deletion back (`X-Ucloud-Revision`)."""

    # Ids revoked through this process, refused even before its own watch delivers the deletion.
    # Token ids are random and never reused, so one refused here can never come back.
    _REVOKED_KEPT = 10_000
    _READ_KEPT = 10_000

    def __init__(self, store: Store, tokens: Mirror[Token], users: Mirror[User]) -> None:
        self._store = store
        self._tokens = tokens
        self._users = users
        self._revoked: set[str] = set()
        # Tokens and users read from etcd for a revision their mirror had not reached: the record
        # (None: absent) and the revision it was read at, the least recently read forgotten first.
        self._read_at: OrderedDict[tuple[str, str], tuple[Versioned[Any] | None, int]] = OrderedDict()
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
        refused = APIError(401, "unauthenticated", "the token is not valid")
        token_id, _, secret = text.strip().partition(".")
        try:
            check_key_part(token_id)
        except ValueError:
            raise refused from None
        with self._lock:
            if token_id in self._revoked:
                raise refused
        token = self._read(self._tokens, TOKENS, token_id)
        if token is None or not hmac.compare_digest(token.value.sha256, _digest(token.value.salt, secret)):
            raise refused
        if _expired(token.value.expires_at):
            raise APIError(401, "unauthenticated", "the token has expired")
        user = self._read(self._users, USERS, token.value.user)
        if user is None or user.value.deleting:  # a user being deleted makes nothing new meanwhile
            raise refused
        return Caller(user.value.name, user.value.role)

    def _read(self, mirror: Mirror[R], family: Family[R], name: str) -> Versioned[R] | None:
        # The client's X-Ucloud-Revision counts here too: after a revocation it sends back, the
        # token is refused by every worker, whatever its watch has delivered so far. Not waited
        # for: it is mostly the revision of a write to another family, which these never reach.
        needed = sent_revision()
        if mirror.wait_for(needed, 0):
            mirrored = mirror.table.items.get(name)
            return mirrored if mirrored is not None else self._store.get(family, name)  # (made a moment ago)
        # Read from etcd then, at a revision at least the one sent, and kept: the next requests
        # sending no newer one are answered by it (the CLI sends its last write's revision with
        # every request until its next write: each cost two etcd reads). A mirror that reaches
        # the revision sent is newer than what was kept, and answers instead (above).
        key = (family.prefix, name)
        with self._lock:
            kept = self._read_at.get(key)
        if kept is not None and kept[1] >= needed:
            return kept[0]
        found, revision = self._store.read(family, name)
        # A revision etcd has not reached is no write's (anyone can send one, or a CLI that kept it
        # from an etcd since replaced): read once, as for any other, not on every request.
        revision = max(revision, needed)
        with self._lock:
            self._read_at[key] = (found, revision)
            self._read_at.move_to_end(key)
            if len(self._read_at) > self._READ_KEPT:
                self._read_at.popitem(last=False)
        return found

    def forget(self, token_id: str) -> None:
        with self._lock:
            if len(self._revoked) >= self._REVOKED_KEPT:
                self._revoked = {t for t in self._revoked if t in self._tokens.table.items}
            self._revoked.add(token_id)


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

