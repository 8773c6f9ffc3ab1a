"""OpenSSH public keys: the checks shared by the API (which refuses a bad key on input) and the agent
(which reads keys back from etcd, where a record is untrusted, before giving them to a guest).

`check_public_key` checks a line's shape (the agent's check: a record's key only has to be safe to put
in a seed); `parse_public_key` also reads the key material (the API's check on input: a key that no
SSH client could hold is refused, not stored).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
# RSA-16384, the largest key accepted below, is ≈ 2,800 characters of base64: the rest is for the
# comment. It bounds what one key costs in a user's record and in each VM record that copies it.
MAX_KEY_LINE = 4096
# OpenSSH refuses RSA keys under 1024 bits (RequiredRSASize); over 16384 bits is no real key.
RSA_BITS = (1024, 16384)
# The NIST curves of ecdsa keys: (field prime p, coefficient b) of y² = x³ - 3x + b (SEC 2), and the
# length of a coordinate in bytes.
_CURVES: dict[str, tuple[int, int, int]] = {
    "nistp256": (2**256 - 2**224 + 2**192 + 2**96 - 1,
                 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B, 32),
    "nistp384": (2**384 - 2**128 - 2**96 + 2**32 - 1,
                 0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
                 48),
    "nistp521": (2**521 - 1,
                 0x0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
                 66),
}


def check_public_key(line: str) -> str:
    """`type base64 [comment]`, where the base64 decodes to a blob that starts with the same type.
    Returns the key as one normalized line (single spaces, no newline); ValueError says what is wrong."""
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError(f"not an OpenSSH public key (expected one of: {', '.join(sorted(SSH_KEY_TYPES))})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part does not decode") from None
    if len(blob) < 4:
        raise ValueError("the key is truncated")
    length = int.from_bytes(blob[:4], "big")
    if blob[4:4 + length].decode(errors="replace") != parts[0]:
        raise ValueError("the key's data does not match its type")
    if len(parts) == 3 and not parts[2].isprintable():
        raise ValueError("the key's comment has control characters")
    return " ".join(parts)


@dataclass(frozen=True)
class PublicKey:
    line: str  # normalized, as `check_public_key` returns it
    type: str
    bits: int


def parse_public_key(line: str) -> PublicKey:
    """The key of an OpenSSH public key line, its material read as RFC 4253/5656/8709 and OpenSSH's
    PROTOCOL.u2f define it: an ed25519 key of 32 bytes, an RSA modulus of 1024-16384 bits with an
    odd exponent, an ecdsa point on its curve; nothing left over. ValueError says what is wrong."""
    if len(line) > MAX_KEY_LINE:
        raise ValueError(f"the key line is over {MAX_KEY_LINE} characters")
    normalized = check_public_key(line)
    kind, data = normalized.split(" ", 2)[:2]
    blob = _Blob(base64.b64decode(data))
    blob.string()  # the type, checked above
    if kind in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(blob.string()) != 32:
            raise ValueError("an ed25519 key is 32 bytes")
        bits = 256
    elif kind == "ssh-rsa":
        exponent, modulus = blob.mpint(), blob.mpint()
        bits = modulus.bit_length()
        if exponent < 3 or exponent % 2 == 0 or not RSA_BITS[0] <= bits <= RSA_BITS[1] or modulus % 2 == 0:
            raise ValueError(f"an RSA key has an odd exponent of at least 3 and an odd modulus of "
                             f"{RSA_BITS[0]}-{RSA_BITS[1]} bits (this one: {bits} bits)")
    else:
        curve = kind.removeprefix("sk-").removeprefix("ecdsa-sha2-").removesuffix("@openssh.com")
        if blob.string() != curve.encode():
            raise ValueError(f"the key's curve is not {curve}")
        _check_point(curve, blob.string())
        bits = _CURVES[curve][2] * 8 if curve != "nistp521" else 521
    if kind.startswith("sk-") and not blob.string().startswith(b"ssh:"):
        raise ValueError("a security-key's application does not start with ssh:")
    blob.end()
    return PublicKey(normalized, kind, bits)


def _check_point(curve: str, point: bytes) -> None:
    p, b, size = _CURVES[curve]
    if len(point) != 1 + 2 * size or point[0] != 4:
        raise ValueError(f"an ecdsa {curve} key is an uncompressed point of {1 + 2 * size} bytes")
    x, y = int.from_bytes(point[1:1 + size], "big"), int.from_bytes(point[1 + size:], "big")
    if x >= p or y >= p or (y * y - (x * x * x - 3 * x + b)) % p != 0:
        raise ValueError(f"the key's point is not on the curve {curve}")


class _Blob:
    """The SSH wire format: 4-byte big-endian lengths, each followed by that many bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def string(self) -> bytes:
        if len(self._data) - self._at < 4:
            raise ValueError("the key's data is truncated")
        length = int.from_bytes(self._data[self._at:self._at + 4], "big")
        start = self._at + 4
        if length > len(self._data) - start:
            raise ValueError("the key's data is truncated")
        self._at = start + length
        return self._data[start:self._at]

    def mpint(self) -> int:
        data = self.string()
        if data and data[0] & 0x80:
            raise ValueError("the key holds a negative number")
        return int.from_bytes(data, "big")

    def end(self) -> None:
        if self._at != len(self._data):
            raise ValueError("the key's data has bytes after the key")
