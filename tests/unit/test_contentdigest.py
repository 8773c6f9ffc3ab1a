"""The content digest (ucloud_common/contentdigest.py) is the documented formula, whatever the pieces it
is fed in, and a file's holes give the digest of the zeros they read as."""

from __future__ import annotations

import os
from pathlib import Path

from blake3 import blake3

from ucloud_common.contentdigest import ContentDigest, digest_of
from ucloud_common.imagecopy import CHUNK


def by_hand(content: bytes) -> str:
    chunks = [content[i:i + CHUNK] for i in range(0, len(content), CHUNK)]
    return blake3(b"".join(blake3(chunk).digest() for chunk in chunks)).hexdigest()


def test_the_digest_is_the_documented_formula_whatever_the_pieces(tmp_path: Path) -> None:
    content = os.urandom(CHUNK) + bytes(2 * CHUNK) + os.urandom(CHUNK // 3)
    for piece in (CHUNK, 1 << 20, 3 * CHUNK, 12345):
        digest = ContentDigest(threads=2)
        for start in range(0, len(content), piece):
            digest.update(content[start:start + piece])
        assert digest.hexdigest() == by_hand(content), piece
    assert ContentDigest().hexdigest() == blake3(b"").hexdigest()
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as file:
        file.write(content[:CHUNK])
        file.seek(3 * CHUNK)
        file.write(content[3 * CHUNK:])
    assert digest_of(sparse) == by_hand(content), "a hole digests as the zeros it reads as"


def test_a_changed_byte_or_a_moved_chunk_changes_the_digest() -> None:
    a, b = os.urandom(CHUNK), os.urandom(CHUNK)
    assert by_hand(a + b) != by_hand(b + a)
    assert by_hand(a + b) != by_hand(a + b[:-1] + bytes([b[-1] ^ 1]))
    assert by_hand(a) != by_hand(a + bytes(CHUNK)), "trailing zeros count"
