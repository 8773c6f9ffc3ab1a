"""The user family `/v1/user/<name>`, the API-token family `/v1/token/<id>` and the password family
`/v1/password/<name>`.

A token is `<id>.<secret>`, shown once when it is made. Only a salted SHA-256 of the secret is
stored: tokens are 256 random bits, so a fast hash is as safe as a slow one and keeps every
request cheap. A password is chosen by a person, so it is kept as a slow Argon2id hash, in its own
family so that no answer that shows a user can ever carry it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from ucloud_common.record import NAME_PATTERN, NAME_SCHEMA, Family, Name, Record, check_name


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
    if name == "me":
        raise ValueError("'me' names the caller in the API's paths (/api/v1/users/me)")
    return name


UserName = Annotated[str, AfterValidator(check_user_name), WithJsonSchema({
    **NAME_SCHEMA, "pattern": NAME_PATTERN.replace(":", "")})]


class User(Record):
    name: Name
    role: Role = Role.USER
    ssh_keys: dict[str, str] = Field(default_factory=dict)  # key name → OpenSSH public key
    # Set by `DELETE /users/<name>?cascade=true`: everything the user owns is being deleted, and
    # nothing new is made for them; the record goes once nothing is left (`ucloud_api.userdeletion`).
    deleting_since: datetime | None = None

    @property
    def deleting(self) -> bool:
        return self.deleting_since is not None


class Token(Record):
    user: Name
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field("initial", min_length=1, max_length=64)  # the owner's label, e.g. "laptop"
    # None: until revoked. The key also lives on an etcd lease that ends then, so expired tokens
    # do not pile up; this field is what is checked, to the second.
    expires_at: datetime | None = None


class Password(Record):
    argon2: str = Field(max_length=512)  # the PHC string: algorithm, parameters, salt and hash


USERS: Family[User] = Family("/v1/user/", User, identity="name")
TOKENS: Family[Token] = Family("/v1/token/", Token)
PASSWORDS: Family[Password] = Family("/v1/password/", Password)  # <user name>
