"""Reading request bodies: size-limited (also when chunked), JSON, validated by a Pydantic model."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import current_app, g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ucloud_api.errors import APIError, invalid

M = TypeVar("M", bound=BaseModel)


def raw_body() -> bytes:
    """The request body, read once; 413 beyond MAX_CONTENT_LENGTH, also when sent chunked."""
    if "body" in g:
        return g.body  # type: ignore[no-any-return]
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    too_large = APIError(413, "too_large", f"the request body exceeds the limit of {limit} bytes")
    if request.content_length is None:
        # Chunked: Werkzeug would silently cut the stream at the limit (and the JSON with it),
        # so read one byte past it from the server's stream and refuse if it is there.
        raw = request.environ["wsgi.input"].read(limit + 1) if request.environ.get("wsgi.input_terminated") else b""
        if len(raw) > limit:
            raise too_large
    else:
        try:
            raw = request.get_data()
        except RequestEntityTooLarge:
            raise too_large from None
    g.body = raw
    return raw


class DuplicateKey(ValueError):
    """A JSON object names one key twice: the decoder would keep the last silently, another reader
    of the same body the first, so the body means nothing certain."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def parse(model: type[M], *, optional: bool = False) -> M:
    """The body as `model`, or an APIError (413 too large, 400 not JSON, 422 not fitting)."""
    raw = raw_body()
    if not raw.strip():
        if optional:
            return model()
        raise APIError(400, "bad_request", "a JSON body is required")
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise APIError(400, "bad_json", f"the body names {str(exc)!r} twice in one object") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer beyond Python's 4,300 digits
        raise APIError(400, "bad_json", f"the body holds a number too long to read: {exc}") from None
    except RecursionError:
        raise APIError(400, "bad_json", "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, "bad_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
