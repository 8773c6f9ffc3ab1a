"""`Idempotency-Key` on POST: a retried request returns the first one's response and does nothing again.

The key is reserved before the work starts (create-if-absent), so two concurrent retries cannot
both do it. Only an accepted write (2xx) keeps its reply, for at least a day; any other answer
(a refusal, an error) gives the reservation up, as nothing was done that a retry could repeat. A key
reused for a different request is refused rather than silently answered with a stale reply.

What this costs etcd is bounded: replies share leases, one per hour for the whole cluster (500
replies made within an hour are on one lease, not 500), and a user keeps at most
`max_idempotency_keys_per_user` replies (a request with a new key past it is a 429).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request
from pydantic import Field

from ucloud_api.auth import current
from ucloud_api.body import raw_body
from ucloud_api.errors import APIError
from ucloud_api.limits import IDEMPOTENCY_KEYS_PER_USER
from ucloud_common.record import Family, Record
from ucloud_common.sharedlease import SharedLease, SharedLeases
from ucloud_common.store import AlreadyExists, Conflict, LeaseExpired, Store, Versioned

KEEP_SECONDS = 24 * 3600
# Replies made within one bucket share a lease that lasts KEEP_SECONDS past the bucket's end: each is
# kept between one day and one day and an hour, and etcd holds one lease per hour, not one per reply.
BUCKET_SECONDS = 3600


class Reply(Record):
    fingerprint: str
    done: bool = False
    status: int = 0
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)


REPLIES: Family[Reply] = Family("/v1/idempotency/", Reply)  # <user>:<hash of the key>
LEASES: Family[SharedLease] = Family("/v1/idempotency-lease/", SharedLease)  # <bucket number>-<TTL>
_LEASES = SharedLeases(LEASES, BUCKET_SECONDS, KEEP_SECONDS)

# What the OpenAPI document promises is taken; the check below also takes printable non-ASCII, which
# a header rarely carries.
IDEMPOTENCY_KEY_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255,
                                          "pattern": "^[\\x20-\\x7e]+$"}


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return view(*args, **kwargs)
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise APIError(400, "bad_request", "Idempotency-Key must be 1-255 printable characters")
        store: Store = current_app.extensions["ucloud.store"]
        user = current().name
        name = f"{user}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        fingerprint = hashlib.sha256(
            request.method.encode() + request.path.encode() + b"\0" + raw_body()
        ).hexdigest()
        first = store.get(REPLIES, name)
        if first is not None:
            return _replay(first, fingerprint)
        IDEMPOTENCY_KEYS_PER_USER.check(store.count(REPLIES, f"{user}:"))
        try:
            _reserve(store, name, Reply(fingerprint=fingerprint))
        except AlreadyExists:
            return _replay(store.get(REPLIES, name), fingerprint)
        try:
            response = view(*args, **kwargs)
        except BaseException:
            store.delete(REPLIES, name)  # nothing was done: let a retry do the work
            raise
        if not 200 <= response.status_code < 300:
            store.delete(REPLIES, name)
            return response
        kept = {k: v for k, v in response.headers.items() if k in ("ETag", "Location", "Content-Type")}
        store.update(REPLIES, name, lambda r: r.evolve(
            done=True, status=response.status_code, body=response.get_data(as_text=True), headers=kept))
        return response

    return wrapper


def _reserve(store: Store, name: str, reply: Reply) -> None:
    """Create the reply on the current bucket's shared lease; AlreadyExists if a request with the
    same key got there first."""
    try:
        store.create(REPLIES, name, reply, lease=_lease(store))
    except LeaseExpired:  # revoked or lost (etcd restored from a backup): take the bucket's new one
        _LEASES.forget(store)
        store.create(REPLIES, name, reply, lease=_lease(store))


def _lease(store: Store) -> int:
    try:
        return _LEASES.current(store)
    except Conflict:
        raise APIError(409, "retry", "retry the request") from None


def _replay(first: Versioned[Reply] | None, fingerprint: str) -> Response:
    if first is None:  # given up or expired between our create and this read
        raise APIError(409, "retry", "retry the request")
    if first.value.fingerprint != fingerprint:
        raise APIError(422, "idempotency_key_reused", "this Idempotency-Key was used for a different request")
    if not first.value.done:
        raise APIError(409, "in_progress", "a request with this Idempotency-Key is still in progress; retry shortly")
    response = current_app.make_response((first.value.body, first.value.status, first.value.headers))
    response.headers["Idempotent-Replayed"] = "true"
    return response
