"""The content digest (ucloud_common/contentdigest.py) is the documented formula, however the file
reads (holes, short reads), and its hashing thread never outlives it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from blake3 import blake3

from ucloud_common.contentdigest import CHUNK, digest_of, digest_reading


def by_hand(content: bytes) -> str:
    chunks = [content[i:i + CHUNK] for i in range(0, len(content), CHUNK)]
    return blake3(b"".join(blake3(chunk).digest() for chunk in chunks)).hexdigest()


def test_the_digest_is_the_documented_formula_holes_or_zeros(tmp_path: Path) -> None:
    content = os.urandom(CHUNK) + bytes(3 * CHUNK) + os.urandom(CHUNK // 3) + bytes(CHUNK) + os.urandom(5)
    written = tmp_path / "written.raw"
    written.write_bytes(content)
    sparse = tmp_path / "sparse.raw"  # holes of whole chunks, of part of one, and across chunks
    with open(sparse, "wb") as file:
        file.write(content[:CHUNK + 4096])
        file.seek(4 * CHUNK)
        file.write(content[4 * CHUNK:4 * CHUNK + CHUNK // 3])
        file.seek(len(content) - 5)
        file.write(content[-5:])
    for path in (written, sparse):
        assert digest_of(path) == by_hand(content), path.name
    empty = tmp_path / "empty"
    empty.touch()
    assert digest_of(empty) == blake3(b"").hexdigest()
    with open(sparse, "r+b") as file:
        file.truncate(8 * CHUNK)
    assert digest_of(sparse) == by_hand(content + bytes(8 * CHUNK - len(content))), "a hole to the end of the file"


def test_every_chunk_is_seen_in_order_zeros_as_none(tmp_path: Path) -> None:
    content = os.urandom(CHUNK) + bytes(2 * CHUNK) + os.urandom(7)
    path = tmp_path / "file.raw"
    with open(path, "wb") as file:
        file.write(content[:2 * CHUNK])  # zeros written, then a hole
        file.seek(3 * CHUNK)
        file.write(content[3 * CHUNK:])
    seen: list[bytes | None] = []
    with open(path, "rb") as file:
        digest = digest_reading(file.fileno(), lambda chunk: seen.append(None if chunk is None else bytes(chunk)))
    assert seen == [content[:CHUNK], None, None, content[3 * CHUNK:]]
    assert digest == by_hand(content)


def test_short_reads_still_make_whole_chunks() -> None:
    """A pipe (like a network file system) returns less than asked: the chunks must not move."""
    content = os.urandom(2 * CHUNK + 12345)
    reading, writing = os.pipe()

    def write() -> None:
        with os.fdopen(writing, "wb") as pipe:
            for start in range(0, len(content), 100_003):
                pipe.write(content[start:start + 100_003])
                pipe.flush()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert digest_reading(reading) == by_hand(content)
    finally:
        writer.join()
        os.close(reading)


def test_a_sparse_file_is_digested_without_reading_its_holes(tmp_path: Path) -> None:
    """File-scan and image-scanner read every byte of a sparse upload's holes: 8 GiB took 18 s here,
    as long as data; `qemu-img convert` skips them."""
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as file:
        file.write(b"data")
        file.truncate(16 * 2**30)
    start = time.perf_counter()
    digest = digest_of(sparse)
    took = time.perf_counter() - start
    assert digest == blake3(blake3(b"data" + bytes(CHUNK - 4)).digest()
                            + blake3(bytes(CHUNK)).digest() * (16 * 2**30 // CHUNK - 1)).hexdigest()
    assert took < 3, f"16 GiB of holes took {took:.1f} s: read, not skipped"


def test_what_the_caller_raises_stops_the_hashing_thread(tmp_path: Path) -> None:
    path = tmp_path / "file.raw"
    path.write_bytes(os.urandom(3 * CHUNK))

    def full_disk(chunk: memoryview | None) -> None:
        raise OSError(28, "No space left on device")

    with open(path, "rb") as file, pytest.raises(OSError, match="No space left"):
        digest_reading(file.fileno(), full_disk)
    assert not [t for t in threading.enumerate() if t.name.startswith("digest")]


def test_a_changed_byte_or_a_moved_chunk_changes_the_digest() -> None:
    a, b = os.urandom(CHUNK), os.urandom(CHUNK)
    assert by_hand(a + b) != by_hand(b + a)
    assert by_hand(a + b) != by_hand(a + b[:-1] + bytes([b[-1] ^ 1]))
    assert by_hand(a) != by_hand(a + bytes(CHUNK)), "trailing zeros count"
