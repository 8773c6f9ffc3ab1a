"""OpenSSH public keys: the one check, shared by the API (which refuses a bad key on input) and the
agent (which reads keys back from etcd, where a record is untrusted, before giving them to a guest)."""

from __future__ import annotations

import base64
import binascii

SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


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
