"""Receiving an upload: the request's body streamed into the caller's upload folder.

The body is never held in memory: it is read in blocks of `BLOCK` bytes and written to a new file
of a temporary name (`ucloud_common.uploads.TEMPORARY_PREFIX`, which file-scan skips) in the
caller's folder, and given its name only once complete, so file-scan never registers half a file.
Everything is opened relative to the folder's own descriptor, with O_NOFOLLOW and O_EXCL: a symlink
planted in the folder (by an operator's copy, or in place of the folder itself) is never followed,
and no existing file is written through. However the upload ends short of complete (too large, the
client gone, a full disk), the temporary file is removed before the answer.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import BinaryIO

from ucloud_api.auth import Caller
from ucloud_api.errors import APIError
from ucloud_api.readdeadline import still_reading
from ucloud_common.config import Settings
from ucloud_common.uploads import FILE_MODE, TEMPORARY_PREFIX, make_user_folder

log = logging.getLogger(__name__)

# Each block read moves the read deadline on (`readdeadline`): a client must send at least this much
# per UCLOUD_API_READ_TIMEOUT (25 KiB/s with the default 10 s) or be cut off as a slow one.
BLOCK = 256 * 1024


def allowed_size(settings: Settings, caller: Caller) -> int:
    """The most bytes an upload of `caller` may have. The one place this is decided: a quota of
    upload bytes per user narrows it here."""
    return int(settings.upload_max_size * 2**30)


def receive(settings: Settings, caller: Caller, name: str, body: BinaryIO, length: int | None,
            replace: bool) -> os.stat_result:
    """Store `body` (`length` bytes, or up to its end when sent chunked) as the caller's file `name`;
    the stored file's stat. An APIError if it is not stored, and then nothing of it is left:
    409 the name is taken (unless `replace`), 413 larger than `allowed_size`, 400 the body ended
    short, 507 no room."""
    limit = allowed_size(settings, caller)
    if length is not None and length > limit:
        raise _too_large(name, limit)
    try:
        folder = make_user_folder(settings.upload_dir, caller.name)  # a user made before uploads existed
    except OSError as exc:  # the API may not write UCLOUD_UPLOAD_DIR: the operator's to mend
        log.error("the upload folder of %s cannot be made: %s", caller.name, exc)
        raise APIError(503, "uploads_unavailable", f"uploads cannot be stored now ({exc.strerror}); the reason is "
                       "in the API's log") from None
    try:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP, ENOTDIR: something else than a folder stands in its place
        raise APIError(409, "folder_unusable", f"your upload folder cannot be used ({exc.strerror}); ask an "
                       "operator to look at it") from None
    try:
        if not replace and _exists(name, directory):
            raise _taken(name)
        if length is not None and length > _free(directory):
            raise APIError(507, "insufficient_storage", f"{name}: {length} bytes do not fit in the upload "
                           "folders' file system now; nothing was stored")
        temporary = TEMPORARY_PREFIX + secrets.token_hex(8)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                _copy(name, body, file, length, limit)
                os.fsync(file.fileno())  # a crash after the rename never leaves the name on half a file
            _give_name(temporary, name, directory, replace)
        finally:
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass  # renamed
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    finally:
        os.close(directory)


def _copy(name: str, body: BinaryIO, file: BinaryIO, length: int | None, limit: int) -> None:
    received = 0
    while length is None or received < length:
        want = BLOCK if length is None else min(BLOCK, length - received)
        try:
            block = body.read(want)
        except Exception:
            # The server's reader raises its own errors for a body cut short or malformed (gunicorn:
            # NoMoreData, an OSError; InvalidChunkSize, a ParseException): all mean the same here.
            raise _ended_short(name, received) from None
        if not block:
            break
        received += len(block)
        if received > limit:
            raise _too_large(name, limit)
        try:
            file.write(block)
        except OSError as exc:
            raise APIError(507, "insufficient_storage", f"{name}: writing it failed ({exc.strerror}); nothing "
                           "was stored") from None
        still_reading()
    if length is not None and received < length:
        raise _ended_short(name, received)


def _give_name(temporary: str, name: str, directory: int, replace: bool) -> None:
    """The complete file under its name. rename and link act on the name itself, never on what a
    symlink there points to; link refuses an existing name, so two uploads of one name at once never
    overwrite each other (nor a file an operator put there meanwhile) unless asked to."""
    try:
        if replace:
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        else:
            os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
    except FileExistsError:
        raise _taken(name) from None
    except IsADirectoryError:
        raise APIError(409, "exists", f"{name} is a folder in your upload folder; choose another name") from None
    except OSError as exc:  # ENOENT: the folder was removed meanwhile (its user is being deleted)
        raise APIError(409, "folder_unusable", f"{name}: your upload folder went away meanwhile ({exc.strerror}); "
                       "nothing was stored") from None


def _exists(name: str, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _free(directory: int) -> int:
    figures = os.statvfs(directory)
    return figures.f_bavail * figures.f_frsize


def _taken(name: str) -> APIError:
    return APIError(409, "exists", f"you already have a file {name}; upload with ?replace=true to replace it")


def _too_large(name: str, limit: int) -> APIError:
    return APIError(413, "too_large", f"{name}: an upload may have at most {limit} bytes; nothing was stored",
                    limit=limit)


def _ended_short(name: str, received: int) -> APIError:
    return APIError(400, "incomplete", f"{name}: the body ended after {received} bytes, before its end; "
                    "nothing was stored")
