"""Answers for stored objects: JSON with the object's etcd revision as its ETag."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, jsonify, request

from ucloud_api.auth import current
from ucloud_api.cache import get_cached
from ucloud_api.errors import APIError, not_found
from ucloud_common.record import Family, InvalidRecord, R, Record, check_key_part
from ucloud_common.store import Store, Versioned

log = logging.getLogger(__name__)


def store() -> Store:
    the_store: Store = current_app.extensions["ucloud.store"]
    return the_store


def object_reply(obj: Versioned[Any], status: int = 200, body: dict[str, Any] | bytes | None = None) -> Response:
    """The object (or `body`, how it is shown; JSON already made if bytes) with its ETag."""
    response = (Response(body, mimetype="application/json") if isinstance(body, bytes)
                else jsonify(body if body is not None else dump(obj.value)))
    response.status_code = status
    response.headers["ETag"] = f'"{obj.mod_revision}"'
    return response


def created_reply(created: Versioned[Any], location: str, body: dict[str, Any] | None = None) -> Response:
    """201 with the new object (or `body`, how it is shown), its ETag and where it lives."""
    response = object_reply(created, 201, body)
    response.headers["Location"] = location
    return response


def dump(record: Record) -> dict[str, Any]:
    return record.model_dump(mode="json")


def if_match() -> int | None:
    """The revision the client's If-Match names, if it sent one."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    # ASCII digits only ("²" is a digit to str.isdigit) and no longer than a revision can be
    # (int() refuses 5,000 digits with a ValueError).
    if not (tag.isascii() and tag.isdigit()) or len(tag) > 20:
        raise APIError(412, "precondition_failed", "If-Match does not match the object's ETag")
    return int(tag)


def check_if_match(obj: Versioned[Any]) -> None:
    wanted = if_match()
    if wanted is not None and wanted != obj.mod_revision:
        raise APIError(412, "precondition_failed",
                       f"the object changed (ETag is now \"{obj.mod_revision}\"); read it again")


def lookup(family: Family[R], name: str, what: str, cached: bool = False) -> Versioned[R]:
    """The object, or 404 (also for a name that cannot be a key: it cannot exist either); from the
    worker's cache when `cached` and the cache is fresh (never for what a write is based on: a
    compare-and-swap fails on a stale revision anyway, but a refusal must be about the present)."""
    try:
        check_key_part(name)
    except ValueError:
        raise not_found(what) from None
    try:
        found = (get_cached(family, name, lambda: store().get(family, name)) if cached
                 else store().get(family, name))
    except InvalidRecord as exc:
        # As a listing skips it, so does a read: the operator learns of it from the log.
        log.warning("skipping invalid record %s", exc)
        raise not_found(what) from None
    if found is None:
        raise not_found(what)
    return found


def lookup_own(family: Family[R], name: str, what: str, cached: bool = False) -> Versioned[R]:
    """Like `lookup`, but another user's object is 404 too, exactly like a missing one."""
    found = lookup(family, name, what, cached)
    caller = current()
    if not caller.is_admin and getattr(found.value, "owner", None) != caller.name:
        raise not_found(what)
    return found
