"""Reading the query string and headers."""

from __future__ import annotations

from typing import Any

from flask import Request, request
from werkzeug.datastructures import ImmutableMultiDict

from ucloud_api.errors import APIError


class _Args(ImmutableMultiDict[str, str]):
    """The query string, whose `get` of an absent name costs no exception: Werkzeug's raises and
    catches a `BadRequestKeyError` for each, and a list alone asks five names that are mostly absent
    (an HTTPException built each time, a tenth of such a request's time in the app)."""

    def get(self, key: str, default: Any = None, type: Any = None) -> Any:  # noqa: A002 (Werkzeug's name)
        return super().get(key, default, type) if key in self else default


class APIRequest(Request):
    parameter_storage_class = _Args


def header(name: str) -> str | None:
    """Request header `name` (not Content-Type or Content-Length), None if absent. Werkzeug's
    `headers.get` raises and catches a KeyError for each absent one, and most requests send none of
    ucloud's own, which are read on every request (the request id, the revision: several times)."""
    return request.environ.get("HTTP_" + name.upper().replace("-", "_"))


def flag(name: str) -> bool:
    """`?name=true` or `?name=false` (absent: false); 400 for anything else, so that a typo such as
    `?cascade=yes` is never taken as false without a word."""
    value = request.args.get(name, "false")
    if value not in ("true", "false"):
        raise APIError(400, "bad_request", f"?{name}= is true or false, not {value!r}")
    return value == "true"
