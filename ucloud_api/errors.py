"""Errors as the API answers them: always JSON `{"error": {"code", "message", ...}}`, never a traceback."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ucloud_common.quoting import printable


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **details: Any) -> None:
        # A message may hold a name from the URL or the body (`/hosts/a%0Ab`): one printable line, always.
        message = printable(message)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def not_found(what: str) -> APIError:
    # The same answer for "absent" and "someone else's": a user cannot tell another's objects exist.
    return APIError(404, "not_found", f"{what} does not exist")


def invalid(exc: ValidationError) -> APIError:
    fields = [
        {"field": ".".join(str(part) for part in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return APIError(422, "invalid", message, fields=fields)
