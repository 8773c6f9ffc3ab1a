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
from dataclasses import dataclass
from typing import BinaryIO

from ucloud_api.auth import Caller
from ucloud_api.errors import APIError
from ucloud_api.readdeadline import still_reading
from ucloud_common.file import FILES
from ucloud_common.quota import room
from ucloud_common.store import Store
from ucloud_common.uploads import FILE_MODE, TEMPORARY_PREFIX, make_user_folder, user_folder

log = logging.getLogger(__name__)

# Each block read moves the read deadline on (`readdeadline`): a client must send at least this much
# per UCLOUD_API_READ_TIMEOUT (25 KiB/s with the default 10 s) or be cut off as a slow one.
BLOCK = 256 * 1024


@dataclass(frozen=True)
class Allowance:
    """The most bytes an upload may have, and which rule decides it (said in a 413)."""

    size: int
    by: str
    code: str = "too_large"


def allowed_size(store: Store, caller: Caller, name: str, replace: bool) -> Allowance:
    """The most bytes the upload `name` of `caller` may have: the one place this is decided. The
    smaller of UCLOUD_UPLOAD_MAX_SIZE and what their quota `upload_bytes` leaves. file-scan charges
    a file to the quota when it registers it, so the files of the folder it has not registered yet
    (uploads of a moment ago, others under way) are taken off here too; a file this one replaces is
    given back."""
    most = int(store.settings.upload_max_size * 2**30)
    left = room(store, caller.name, "upload_bytes") - _not_counted_yet(store, caller.name, name if replace else None)
    if left < most:
        return Allowance(max(0, left), f"your quota upload_bytes leaves {max(0, left)} bytes (`ucloud quota`)",
                         "quota_exceeded")
    return Allowance(most, f"an upload may have at most {most} bytes (UCLOUD_UPLOAD_MAX_SIZE)")


def _not_counted_yet(store: Store, user: str, replaced: str | None) -> int:
    """Bytes of the user's folder that their usage does not count (files file-scan has not registered
    yet, uploads under way), less what `replaced` holds (counted or not: it goes)."""
    registered = {f.value.filename: f.value.size for f in store.list(FILES, where={"owner": user}).items.values()}
    pending = 0
    try:
        entries = list(os.scandir(user_folder(store.settings.upload_dir, user)))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if entry.name not in registered and entry.name != replaced and entry.is_file(follow_symlinks=False):
            try:
                pending += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
    return pending - (registered.get(replaced, 0) if replaced else 0)


def receive(store: Store, caller: Caller, name: str, body: BinaryIO, length: int | None,
            replace: bool) -> os.stat_result:
    """Store `body` (`length` bytes, or up to its end when sent chunked) as the caller's file `name`;
    the stored file's stat. An APIError if it is not stored, and then nothing of it is left:
    409 the name is taken (unless `replace`), 413 larger than `allowed_size`, 400 the body ended
    short, 507 no room."""
    limit = allowed_size(store, caller, name, replace)
    if length is not None and length > limit.size:
        raise _too_large(name, limit)
    try:
        folder = make_user_folder(store.settings.upload_dir, caller.name)  # a user made before uploads existed
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


def _copy(name: str, body: BinaryIO, file: BinaryIO, length: int | None, limit: Allowance) -> None:
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
        if received > limit.size:
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


def _too_large(name: str, limit: Allowance) -> APIError:
    return APIError(413, limit.code, f"{name} is too large: {limit.by}; nothing was stored", limit=limit.size)


def _ended_short(name: str, received: int) -> APIError:
    return APIError(400, "incomplete", f"{name}: the body ended after {received} bytes, before its end; "
                    "nothing was stored")
