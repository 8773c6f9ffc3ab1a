"""Files: uploaded through the API (streamed into the caller's upload folder) and listed once
file-scan registered them (`ucloud_filescan`: the only writer of `/v1/file/`)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from ucloud_api import uploads
from ucloud_api.audit import told
from ucloud_api.auth import current
from ucloud_api.cache import list_reply
from ucloud_api.errors import APIError
from ucloud_api.query import flag
from ucloud_api.replies import store
from ucloud_common.event import Kind
from ucloud_common.file import FILES
from ucloud_common.quoting import quote
from ucloud_common.store import StoreError
from ucloud_common.uploads import check_upload_name
from ucloud_common.user import USERS

log = logging.getLogger(__name__)

files = Blueprint("files", __name__, url_prefix="/api/v1/files")


@files.get("")
def list_files() -> Response:
    caller = current()
    return list_reply(FILES, index=None if caller.is_admin else "owner", value=caller.name)


# `path:`: a name with a slash reaches the check below (a 400 that says why) instead of a 404.
@files.put("/<path:filename>")
def upload(filename: str) -> Response:
    """No Idempotency-Key: its kept answer is small, but a retry would send the whole body again
    anyway; a retried upload gets 409 (or replaces, with ?replace=true)."""
    caller = current()
    try:
        check_upload_name(filename)
    except ValueError as exc:
        raise APIError(400, "bad_name", f"file name {filename!r}: {exc}") from None
    replace = flag("replace")
    user = store().get(USERS, caller.name)
    if user is None or user.value.deleting:
        raise APIError(409, "user_deleted", f"user {caller.name} is being deleted: nothing new is stored for it")
    length = request.content_length
    if not length and not request.environ.get("wsgi.input_terminated"):
        raise APIError(400, "no_body", "the body is the file: send it, with Content-Length or chunked (an empty "
                       "file makes no image)")
    stored = uploads.receive(store(), caller, filename, request.environ["wsgi.input"], length, replace)
    try:
        store().transact([told(Kind.USER, caller.name, f"upload file {filename} ({stored.st_size} bytes"
                                                       f"{', replacing any of that name' if replace else ''})")])
    except StoreError as exc:
        # The file is stored: a 503 would have the client send it all again, only to get a 409.
        log.warning("the event of %s's upload of %s is lost: %s", caller.name, quote(filename), exc)
    response = jsonify({"owner": caller.name, "filename": filename, "size": stored.st_size,
                        "registered": False, "note": "file-scan registers it on its next run: then it is in "
                        "GET /api/v1/files with its uuid and sha512"})
    response.status_code = 201
    return response

