"""The base of every record stored in etcd, and the family that maps records to keys.

A `Family` is the only code that turns a record's name into an etcd key and back: daemons never
concatenate key strings. Records are frozen (a reconcile cycle decides on one immutable snapshot)
and keep fields they do not know (`extra="allow"`), so that an older daemon's compare-and-swap
update never drops a field a newer one wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from ucloud_common import clock

# A name: never a slash, never `.` or `..`, no control characters, short enough for a DNS label
# (VM and host names end up in hostnames and file names). Written without a lookahead ("a dot is
# followed by a non-dot or the end") so that the OpenAPI document can carry it as is: JSON Schema
# patterns are ECMA-262, and the fuzzer's generator builds strings from it.
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_:@-]|\.[A-Za-z0-9_:@-])*\.?$"
NAME_MAX = 63
# What may stand after a family's prefix: a name, or names joined by ':' (e.g. owner:name claims).
KEY_PART_MAX = 191
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str) -> str:
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise ValueError(
            "must be 1-63 characters of letters, digits and . _ - : @, start with a letter or digit, "
            "and contain no '..'"
        )
    return name


def check_key_part(part: str) -> str:
    if len(part) > KEY_PART_MAX or not _NAME.fullmatch(part):
        raise ValueError(f"{part!r} cannot be part of a key")
    return part


def is_key_part(text: str) -> bool:
    """Whether `text` may be part of a key (`check_key_part` without the error)."""
    return len(text) <= KEY_PART_MAX and _NAME.fullmatch(text) is not None


# The schema states the rule for the OpenAPI document; `check_name` enforces it with a sentence.
NAME_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}
Name = Annotated[str, AfterValidator(check_name), WithJsonSchema(NAME_SCHEMA)]


def utcnow() -> datetime:
    return datetime.fromtimestamp(clock.now(), UTC)


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def evolve(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied and `updated_at` moved to now.

        (`model_copy(update=…)` would skip validation and let a bad value into etcd.)
        """
        data = self.model_dump()
        data.update(changes)
        data["updated_at"] = utcnow()
        return self.model_validate(data)


class InvalidRecord(ValueError):
    """A value in etcd that is not JSON or does not fit its family's model, or a key that no record
    of its family can have."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Family(Generic[R]):
    """A key family: every key under `prefix` holds one `model` as JSON, named by the rest of the key."""

    prefix: str
    model: type[R]
    # The record's field that names it, which must equal the rest of its key: the key is the
    # identity, so a record stored under one key that names another object is invalid (an agent
    # once deleted the VM it named). None for records named only by their key.
    identity: str | None = None

    def key(self, name: str) -> str:
        return self.prefix + check_key_part(name)

    def name_of(self, key: str | bytes) -> str:
        """The name that `key` gives its record; `InvalidRecord` if it is not a key of this family:
        not under its prefix, not UTF-8, or the rest is no valid key part. Every key read from the
        store (listed, watched, put or deleted) is named here, so a key that ucloud never writes
        (`/v1/vm/bad key`, `/v1/vm/../x`) never reaches code that builds paths or keys from names."""
        # A key that is no name is shown quoted (repr): it may hold a newline or a terminal escape.
        try:
            text = key.decode() if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            raise InvalidRecord(repr(key), "not a valid key: not UTF-8") from None
        if not text.startswith(self.prefix):
            raise InvalidRecord(repr(text), f"not a valid key: not under {self.prefix}")
        try:
            return check_key_part(text[len(self.prefix):])
        except ValueError as exc:
            raise InvalidRecord(repr(text), f"not a valid key ({exc})") from None

    def encode(self, record: R) -> bytes:
        return record.model_dump_json().encode()

    def decode(self, key: str | bytes, value: bytes) -> R:
        name = self.name_of(key)
        key_text = self.prefix + name
        try:
            record = self.model.model_validate_json(value)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0]["type"] == "json_invalid":
                raise InvalidRecord(key_text, f"not JSON ({errors[0]['msg']})") from None
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in errors
            )
            raise InvalidRecord(key_text, f"does not fit {self.model.__name__} ({problems})") from None
        if self.identity is not None and getattr(record, self.identity) != name:
            raise InvalidRecord(key_text, f"its {self.identity} {getattr(record, self.identity)!r} is not its "
                                          f"key's {name!r}")
        return record
