"""Copying an untrusted file into a private staging file, keeping its holes, with its sha512 when asked.

From the copy on, the file's owner can change nothing of what is checked and converted.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
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


def copy_hashed(source_fd: int, target: Path) -> str:
    """`copy_sparse`, returning the sha512 of what was copied, computed in a second thread beside
    the copy (hashlib releases the GIL)."""
    digest = hashlib.sha512()
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def hash_all() -> None:
        while (chunk := chunks.get()) is not None:
            digest.update(chunk)

    hasher = threading.Thread(target=hash_all, name="sha512")
    hasher.start()
    try:
        copy_sparse(source_fd, target, chunks.put)
    finally:
        chunks.put(None)
        hasher.join()
    return digest.hexdigest()


def new_image_digest() -> hashlib.blake2b:
    """The digest of a stored raw image (`Image.digest`), which a host checks an image fetched from
    another host against: BLAKE2b-512, in hashlib, faster than sha512 on 64-bit CPUs."""
    return hashlib.blake2b()


def image_digest_of(path: Path) -> str:
    digest = new_image_digest()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
