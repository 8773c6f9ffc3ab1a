"""What requests may contain. Unknown fields are refused (a typo must not be silently ignored)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ucloud_common.record import Name
from ucloud_common.specs import Specs
from ucloud_common.user import Role


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMCreate(Strict):
    name: Name
    specs: Specs
    image: Name = Field(description="uuid of a CREATED image that is public or yours")
    storage: Literal["local", "rbd"] = "local"
    ssh_keys: list[Name] = Field(default_factory=list, max_length=32, description="names of your SSH keys")
    networks: list[Name] = Field(default_factory=list, max_length=8, description="uuids of your networks")
    anti_affinity: Name | None = Field(None, description="VMs of one group are placed on different hosts")


class Migrate(Strict):
    host: Name | None = Field(None, description="target host; the scheduler chooses when absent")


class UserCreate(Strict):
    name: Name
    role: Role = Role.USER


class NetworkCreate(Strict):
    name: Name
    type: Literal["vxlan"] = "vxlan"
    ipv6_prefix: str | None = Field(None, description="an IPv6 /64, e.g. 2001:db8:1::/64")

    @field_validator("ipv6_prefix")
    @classmethod
    def _a_64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            network = ipaddress.IPv6Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not an IPv6 network: {exc}") from None
        if network.prefixlen != 64:
            raise ValueError("must be a /64 (SLAAC needs one)")
        return str(network)


class Attachment(Strict):
    vm: Name = Field(description="uuid of your VM")


class SSHKeyCreate(Strict):
    name: Name
    key: str = Field(max_length=16384, description="an OpenSSH public key line")

    @field_validator("key")
    @classmethod
    def _openssh(cls, value: str) -> str:
        return check_public_key(value)


class ImageCreate(Strict):
    name: Name
    file: Name = Field(description="uuid of one of your files")
    store: Name = Field(description="the image store to create it in")
    public: bool = Field(False, description="visible to every user (admins only)")


class Maintenance(Strict):
    on: bool


SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


def check_public_key(line: str) -> str:
    """`type base64 [comment]`, where the base64 decodes to a blob that starts with the same type."""
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
