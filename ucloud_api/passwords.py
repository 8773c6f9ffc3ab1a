"""Users' passwords: Argon2id (argon2-cffi's defaults, RFC 9106's second recommended choice: 64 MiB,
3 passes, 4 lanes), checked in constant time, and a check that costs the same when the user has no
password or does not exist, so that timing tells nobody which names are users."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _stand_in() -> str:
    # Verified against when there is no stored hash: the same work as a real check, never a match.
    return _hasher.hash("a password no one has: this hash is only ever verified against")


def check_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches the stored PHC string (None: the user has no password: never).
    argon2's verify compares the digests in constant time."""
    try:
        matches = _hasher.verify(stored or _stand_in(), password)
    except (VerificationError, InvalidHashError):
        return False
    return matches and stored is not None
