"""Reading request bodies: size-limited (also when chunked), JSON, validated by a Pydantic model."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ucloud_api.errors import APIError, invalid

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], *, optional: bool = False) -> M:
    """The body as `model`, or an APIError (413 too large, 400 not JSON, 422 not fitting)."""
    try:
        # Werkzeug enforces MAX_CONTENT_LENGTH here, for chunked bodies too (no Content-Length).
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise APIError(413, "too_large", "the request body exceeds the limit") from None
    if not raw.strip():
        if optional:
            return model()
        raise APIError(400, "bad_request", "a JSON body is required")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "bad_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
