"""Copying an untrusted file into a private staging file, keeping its holes and computing its digest.

From the copy on, the file's owner can change nothing of what is checked and converted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ucloud_common.contentdigest import CHUNK, digest_reading


def copy_sparse(source_fd: int, target: Path) -> str:
    """Copy the open file (from its offset, 0 when just opened) to `target` (created 0600, never existing before), leaving
    holes where whole chunks are zeros, and return the content digest of what was copied (`contentdigest`)."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(out, "wb") as dst:

        def write(chunk: memoryview | None) -> None:
            if chunk is None:
                dst.seek(CHUNK, os.SEEK_CUR)  # disk images are mostly zeros
            else:
                dst.write(chunk)

        digest = digest_reading(source_fd, write)
        dst.truncate()
    return digest


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
