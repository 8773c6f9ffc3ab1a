"""The user family: `/v1/user/<name>`. Tokens are kept only as salted hashes."""

from __future__ import annotations

from enum import StrEnum

from ucloud_common.record import Family, Name, Record


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(Record):
    name: Name
    role: Role = Role.USER
    token_hashes: tuple[str, ...] = ()


USERS: Family[User] = Family("/v1/user/", User)
