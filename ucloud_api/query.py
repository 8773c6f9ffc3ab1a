"""Reading the query string."""

from __future__ import annotations

from flask import request

from ucloud_api.errors import APIError


def flag(name: str) -> bool:
    """`?name=true` or `?name=false` (absent: false); 400 for anything else, so that a typo such as
    `?cascade=yes` is never taken as false without a word."""
    value = request.args.get(name, "false")
    if value not in ("true", "false"):
        raise APIError(400, "bad_request", f"?{name}= is true or false, not {value!r}")
    return value == "true"
