"""`Idempotency-Key` on POST: a retried request returns the first one's response and does nothing again.

The key is reserved before the work starts (create-if-absent), so two concurrent retries cannot
both do it; the response is then stored with it. A reply is kept for a day (an etcd lease).
A key reused for a different request is refused rather than silently answered with a stale reply.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request
from pydantic import Field

from ucloud_api.auth import current
from ucloud_api.body import raw_body
from ucloud_api.errors import APIError
from ucloud_common.record import Family, Record
from ucloud_common.store import AlreadyExists, Store

KEEP_SECONDS = 24 * 3600


class Reply(Record):
    fingerprint: str
    done: bool = False
    status: int = 0
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)


REPLIES: Family[Reply] = Family("/v1/idempotency/", Reply)


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return view(*args, **kwargs)
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise APIError(400, "bad_request", "Idempotency-Key must be 1-255 printable characters")
        store: Store = current_app.extensions["ucloud.store"]
        name = f"{current().name}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        fingerprint = hashlib.sha256(
            request.method.encode() + request.path.encode() + b"\0" + raw_body()
        ).hexdigest()
        try:
            store.create(REPLIES, name, Reply(fingerprint=fingerprint), lease=store.grant_lease(KEEP_SECONDS))
        except AlreadyExists:
            return _replay(store, name, fingerprint)
        try:
            response = view(*args, **kwargs)
        except APIError as exc:
            if exc.status >= 500:
                store.delete(REPLIES, name)
                raise
            response = current_app.make_response((json.dumps(exc.body()), exc.status, {"Content-Type": "application/json"}))
        except BaseException:
            store.delete(REPLIES, name)  # nothing was answered: let a retry do the work
            raise
        kept = {k: v for k, v in response.headers.items() if k in ("ETag", "Location", "Content-Type")}
        store.update(REPLIES, name, lambda r: r.evolve(
            done=True, status=response.status_code, body=response.get_data(as_text=True), headers=kept))
        return response

    return wrapper


def _replay(store: Store, name: str, fingerprint: str) -> Response:
    first = store.get(REPLIES, name)
    if first is None:  # expired between our create and this read
        raise APIError(409, "retry", "retry the request")
    if first.value.fingerprint != fingerprint:
        raise APIError(422, "idempotency_key_reused", "this Idempotency-Key was used for a different request")
    if not first.value.done:
        raise APIError(409, "in_progress", "a request with this Idempotency-Key is still in progress; retry shortly")
    response = current_app.make_response((first.value.body, first.value.status, first.value.headers))
    response.headers["Idempotent-Replayed"] = "true"
    return response
