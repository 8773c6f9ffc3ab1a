"""Users' upload folders: `<upload_dir>/<user>/`, the names a file uploaded through the API may have,
and the temporary names uploads are written under.

The API (which runs as the `ucloud` user) makes a user's folder when it creates the user, writes
uploads into it, and removes it with the user; file-scan (also `ucloud`) reads it. So a folder is
owned by the API's user and group, mode 0750: no one else on the machine reads another's uploads.
An operator may still copy files in by hand (the seed's way): they must be readable by the group.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ucloud_common.record import check_name

FOLDER_MODE = 0o750
FILE_MODE = 0o640
# An upload is written under this prefix and renamed to its name once complete: file-scan skips
# such names, so that it never registers half a file. A dot-file, which no upload may be named.
TEMPORARY_PREFIX = ".upload-"
NAME_MAX_BYTES = 255  # a file name's limit on Linux file systems
# A file name: printable ASCII, no '/' or '\\' (files go straight into the folder), not starting with
# '.' (no '.', '..', hidden files, nor the temporary names). ASCII only: no control characters, no
# right-to-left marks or look-alikes in the names an admin reads in logs and listings. Written with
# \x ranges so that the OpenAPI document carries it as is (ECMA-262 reads them too).
NAME_PATTERN = r"^[\x20-\x2d\x30-\x5b\x5d-\x7e][\x20-\x2e\x30-\x5b\x5d-\x7e]*$"
_NAME = re.compile(NAME_PATTERN)


def check_upload_name(name: str) -> str:
    """`name` if a file uploaded through the API may have it; ValueError saying why not."""
    if not name or len(name.encode()) > NAME_MAX_BYTES:
        raise ValueError(f"a file name has 1 to {NAME_MAX_BYTES} characters")
    if not _NAME.fullmatch(name):
        raise ValueError("a file name is printable ASCII (letters, digits, spaces, punctuation) without '/' or "
                         "'\\', and does not start with '.'")
    return name


def is_temporary(name: str) -> bool:
    """True for an upload still being written (file-scan leaves it alone)."""
    return name.startswith(TEMPORARY_PREFIX)


def user_folder(upload_dir: Path, user: str) -> Path:
    """The user's upload folder: the only place its path is built."""
    return upload_dir / check_name(user)


def make_user_folder(upload_dir: Path, user: str) -> Path:
    """Make the user's folder (mode 0750) if it does not exist yet; OSError if it cannot be made."""
    folder = user_folder(upload_dir, user)
    try:
        os.mkdir(folder, FOLDER_MODE)
    except FileExistsError:
        pass
    return folder


def remove_user_folder(upload_dir: Path, user: str) -> None:
    """Remove the user's folder and all in it; nothing if it does not exist. rmtree never follows
    the symlinks inside; a symlink in the folder's own place (only an operator can put one in
    `upload_dir`) is removed itself, not followed."""
    folder = user_folder(upload_dir, user)
    if folder.is_symlink():
        folder.unlink()
        return
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
