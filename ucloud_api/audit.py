"""Who asked for what: each request's id (`X-Request-Id`), the access log, and the events of writes.

The request id is the client's `X-Request-Id` if it is one (1-128 characters of letters, digits and
`._:@=+/-`, starting with a letter or digit: it goes into logs, events and records as is), else a new
one; every answer carries it, errors too, and every line logged while answering ends with it.

The access log is written here, after each request, rather than by gunicorn: only the app knows the
authenticated user and the request id, it logs through the same setup as every daemon (one format,
`UCLOUD_LOG_FORMAT=json` included), and tests under Flask's client see the same lines. What it
cannot see is the time spent sending the answer's bytes, which gunicorn would add.
"""

from __future__ import annotations

import logging
import random
import re
import time

from flask import Flask, Response, g, jsonify, request

from ucloud_api.auth import current
from ucloud_api.errors import APIError
from ucloud_api.query import header
from ucloud_api.replies import store
from ucloud_common import logs
from ucloud_common.event import REQUEST_ID_PATTERN, Event, Kind, event_leases, new_event, ref
from ucloud_common.store import LeaseExpired, Put

HEADER = "X-Request-Id"
_SANE = re.compile(REQUEST_ID_PATTERN)

access_log = logging.getLogger("ucloud_api.access")


def install(app: Flask) -> None:
    """Give every request an id and log every answer. Call before any other `before_request`, so that
    an answer refused early (a 401) has its id and its line too."""

    @app.before_request
    def take_request_id() -> None:
        asked = header(HEADER) or ""
        g.request_id = asked if _SANE.fullmatch(asked) else _new_id()
        g.started = time.monotonic()
        g.logging_token = logs.begin_request(g.request_id)

    @app.after_request
    def answer_request_id(response: Response) -> Response:
        response.headers[HEADER] = g.request_id
        if not access_log.isEnabledFor(logging.INFO):
            return response
        caller = g.get("caller")
        duration_ms = round((time.monotonic() - g.started) * 1000, 1)
        access_log.info("user=%s %s %s %d %.1fms", caller.name if caller else "-", request.method, request.path,
                        response.status_code, duration_ms,
                        extra={"user": caller.name if caller else None, "method": request.method,
                               "path": request.path, "status": response.status_code, "duration_ms": duration_ms})
        return response

    @app.errorhandler(LeaseExpired)
    def event_lease_gone(exc: LeaseExpired) -> tuple[Response, int, dict[str, str]]:
        # The events' shared lease was revoked (or etcd restored from an older backup): nothing was
        # written; the next request finds or grants the current one.
        access_log.warning("%s %s: %s", request.method, request.path, exc)
        event_leases(store()).forget(store())
        body = APIError(503, "unavailable", "a lease of the state store expired; nothing was changed: retry").body()
        return jsonify(body), 503, {"Retry-After": "1"}

    @app.teardown_request
    def leave_request(_: BaseException | None) -> None:
        token = g.pop("logging_token", None)
        if token is not None:
            logs.end_request(token)


def _new_id() -> str:
    # 128 random bits as uuid4's hex, from the process's own generator (reseeded in each forked
    # worker): an id is no secret, and os.urandom's system call let go of the GIL on every request.
    return f"{random.getrandbits(128):032x}"


def request_id() -> str:
    return str(g.request_id)


def told(kind: Kind, name: str, message: str, user: str | None = None) -> Put[Event]:
    """The event of this request's write on the object, to go in the write's transaction: the caller
    (or `user`, for a request made before anyone is authenticated: a login) asked for `message`."""
    return new_event(store(), ref(kind, name), "api", message, user=user if user is not None else current().name,
                     request_id=request_id())

