"""Copying an untrusted file into a private staging file, keeping its holes (its digest computed by the caller).

From the copy on, the file's owner can change nothing of what is checked and converted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 4 * 1024 * 1024
ZEROS = bytes(CHUNK)


def copy_sparse(source_fd: int, target: Path, on_chunk: Callable[[bytes], None] | None = None) -> None:
    """Copy the open file (from its offset, 0 when just opened) to `target` (created 0600, never existing before), leaving
    holes where whole chunks are zeros; `on_chunk` sees every chunk read, in order."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(source_fd, "rb", closefd=False) as src, os.fdopen(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            if on_chunk:
                on_chunk(chunk)
            if len(chunk) == CHUNK and chunk == ZEROS:
                dst.seek(CHUNK, os.SEEK_CUR)  # disk images are mostly zeros
            else:
                dst.write(chunk)
        dst.truncate()


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
