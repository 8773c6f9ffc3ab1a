"""`GET /api/v1/events` (admin): the event logs of all objects, or of one, also of deleted ones (for
`UCLOUD_EVENT_RETENTION`). A user reads their own VMs' events at `GET /api/v1/vms/<uuid>/events`."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime

from flask import Blueprint, Response, jsonify, request

from ucloud_api.auth import require_admin
from ucloud_api.errors import APIError
from ucloud_api.replies import dump, store
from ucloud_common.event import EVENTS, Event, Kind, events_of
from ucloud_common.record import check_key_part

bp = Blueprint("events", __name__, url_prefix="/api/v1/events")

LIMIT_DEFAULT = 500
LIMIT_MAX = 5000
_PAGE = 1000  # events read from etcd at a time


@bp.get("")
def list_() -> Response:
    """Events oldest first, after `since` if given, at most `limit` — or a few more: a page ends with
    every event of its last one's time, so that paging on with `since` set to that time loses none
    (events written in the same microsecond have the same `created_at`)."""
    require_admin()
    obj, since, limit = _object(), _since(), _limit()
    page = heapq.nsmallest(limit, _after(obj, since), key=lambda e: e.created_at)
    if len(page) == limit:
        last = page[-1].created_at
        page = [e for e in page if e.created_at < last] + [e for e in _after(obj, since) if e.created_at == last]
    return jsonify([dump(e) for e in page])


def _after(obj: str, since: datetime | None) -> Iterator[Event]:
    return (e for e in _every(obj) if since is None or e.created_at > since)


def _every(obj: str) -> Iterator[Event]:
    """The events (of `obj` if given), page by page: a worker holds one page and the `limit` oldest
    so far, never the whole family (a week of a cluster's events: hundreds of thousands, 1.3 KB each
    in memory, which one listing held at once)."""
    after = ""
    while True:
        page, after = store().page(EVENTS, events_of(obj) if obj else "", after, _PAGE,
                                   where={"object": obj} if obj else None)
        yield from (item.value for item in page)
        if not after:
            return


def _object() -> str:
    obj = request.args.get("object")
    if obj is None:
        return ""
    # Any name that can be part of a key: one no object has (too long for a VM's) simply has no events.
    kind, _, name = obj.partition(":")
    try:
        Kind(kind)
        check_key_part(obj)
        check_key_part(name)
    except ValueError:
        raise APIError(400, "bad_request", f"object must be <kind>:<name> with a kind of {', '.join(Kind)} "
                       "(e.g. vm:<uuid>, user:alice, host:h1)") from None
    return obj


def _since() -> datetime | None:
    text = request.args.get("since")
    if text is None:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise APIError(400, "bad_request", "since must be a time in ISO 8601 with its offset, e.g. "
                       "2025-01-31T12:00:00+00:00") from None
    if since.tzinfo is None:
        raise APIError(400, "bad_request", "since needs a UTC offset (e.g. +00:00 or Z)")
    return since


def _limit() -> int:
    text = request.args.get("limit", str(LIMIT_DEFAULT))
    if not (text.isascii() and text.isdigit() and len(text) <= 4) or not 1 <= int(text) <= LIMIT_MAX:
        raise APIError(400, "bad_request", f"limit must be a number from 1 to {LIMIT_MAX}")
    return int(text)
