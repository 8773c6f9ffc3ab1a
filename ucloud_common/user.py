"""The user family `/v1/user/<name>` and the API-token family `/v1/token/<id>`.

A token is `<id>.<secret>`, shown once when it is made. Only a salted SHA-256 of the secret is
stored: tokens are 256 random bits, so a fast hash is as safe as a slow one and keeps every
request cheap.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from ucloud_common.record import Family, Name, Record, check_name


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


def check_user_name(name: str) -> str:
    """A name for a new user: a name without ':'. What a user owns is claimed as `<owner>:<name>`
    (`claim.owned`) and kept under `<owner>:…` keys, so a ':' in a user's name would let user "a:b"'s
    VM "c" and user "a"'s VM "b:c" claim the same key, and one user's count include another's."""
    check_name(name)
    if ":" in name:
        raise ValueError("a user's name has no ':'")
    return name


UserName = Annotated[str, AfterValidator(check_user_name)]


class User(Record):
    name: Name
    role: Role = Role.USER
    ssh_keys: dict[str, str] = Field(default_factory=dict)  # key name → OpenSSH public key


class Token(Record):
    user: Name
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


USERS: Family[User] = Family("/v1/user/", User, identity="name")
TOKENS: Family[Token] = Family("/v1/token/", Token)
