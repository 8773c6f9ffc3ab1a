"""The digest of a disk image's content: what file-scan records for an upload (`File.digest`),
what image-scanner checks its private copy against, and what a host checks an image fetched from
another host against (`Image.digest`).

It is BLAKE3 over the BLAKE3 of each 4 MiB chunk in order, a chunk of only zeros standing for the
digest of such a chunk without being hashed again. Measured (tests/bench/storage.py, README "Ceph,
uploads and images"): one sha512 ran at 0.4–1.2 GB/s on one core and made image-scanner 140–220%
slower than `qemu-img convert` for a raw file; BLAKE3 (SIMD) hashed 2 to 4.5 times as fast as
hashlib's BLAKE2b on the same core (tried first); and disk images are mostly zeros, which need not
be hashed again (nor read, where the file has a hole): a single hash of the whole stream could not
skip them.

`digest_reading` reads a file once and hands each chunk to its caller (image-scanner copies it,
file-scan also takes its sha512) while one other thread hashes it: the copy on one core, the hash on
the other, as `qemu-img convert` alone would use them.

By hand: `blake3(b"".join(blake3(chunk).digest() for chunk in chunks)).hexdigest()`.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from blake3 import blake3

CHUNK = 4 * 1024 * 1024
ZEROS = bytes(CHUNK)

_ZERO_CHUNK = blake3(ZEROS).digest()
# Chunks read and not hashed yet, at most (16 MiB). One hashing thread: it hashes (2.5 GB/s here)
# faster than one core copies, so the copy sets the pace; 2 to 8 buffers, or a second hashing thread
# (a third busy thread on two cores), measured the same within the noise.
_BUFFERS = 4


def digest_reading(fd: int, on_chunk: Callable[[memoryview | None], None] | None = None) -> str:
    """Read the open file from its offset to its end and return its content digest; `on_chunk` sees
    every chunk in order (CHUNK bytes, the last one shorter), or None for CHUNK bytes of zeros (read
    as such, or a hole not read at all). A chunk is valid only during that call: its buffer is read
    into again afterwards, so `on_chunk` must copy what it keeps."""
    chunks = blake3()
    # Each chunk read: its digest, or the hashing of it and the buffer it holds until then.
    pending: deque[bytes | tuple[Future[bytes], bytearray]] = deque()
    free = [bytearray(CHUNK) for _ in range(_BUFFERS)]

    def settle(wait: bool) -> None:
        """Add the digests of the chunks hashed so far (with `wait`, of one chunk more) to `chunks`,
        in order, freeing their buffers."""
        while pending:
            head = pending[0]
            if isinstance(head, bytes):
                chunks.update(head)
            elif wait or head[0].done():
                chunks.update(head[0].result())
                free.append(head[1])
                wait = False
            else:
                return
            pending.popleft()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest") as hashing:
        while True:
            if _hole_ahead(fd):
                pending.append(_ZERO_CHUNK)
                chunk = None
            else:
                if not free:
                    settle(wait=True)
                buffer = free.pop()
                length = _fill(fd, buffer)
                if length == CHUNK and buffer == ZEROS:
                    free.append(buffer)
                    pending.append(_ZERO_CHUNK)
                    chunk = None
                elif length:
                    # The copy and the hash read these same private bytes: reading the user's file twice,
                    # or mapping it, would let its owner change it in between (a copy not the one digested).
                    chunk = memoryview(buffer)[:length]
                    pending.append((hashing.submit(_digest, chunk), buffer))
                else:
                    free.append(buffer)
                    break
            if on_chunk:
                on_chunk(chunk)
            settle(wait=False)
            if chunk is not None and len(chunk) < CHUNK:
                break
        while pending:
            settle(wait=True)
    return chunks.hexdigest()


def digest_of(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_reading(fd)
    finally:
        os.close(fd)


def _digest(chunk: memoryview) -> bytes:
    return blake3(chunk).digest()  # the binding releases the GIL: the reading goes on meanwhile


def _fill(fd: int, buffer: bytearray) -> int:
    """Read into `buffer` until it is full or the file ends (a read may return less, e.g. from a pipe
    or a network file system: chunks must still be CHUNK bytes); return how many bytes it holds."""
    view, filled = memoryview(buffer), 0
    while filled < CHUNK and (got := os.readv(fd, [view[filled:]])):
        filled += got
    return filled


def _hole_ahead(fd: int) -> bool:
    """Whether the CHUNK bytes from the file's offset are all a hole (they read as zeros); if so the
    offset moves past them, unread. `qemu-img convert` skips holes the same way (SEEK_DATA), so a
    sparse upload costs it nothing to read either."""
    try:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False  # not seekable (a pipe): no holes to know of, it is read
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        data = os.fstat(fd).st_size  # no data from the offset on: a hole to the end of the file
    if data >= offset + CHUNK:
        os.lseek(fd, offset + CHUNK, os.SEEK_SET)
        return True
    if data != offset:
        os.lseek(fd, offset, os.SEEK_SET)  # SEEK_DATA moved it
    return False
