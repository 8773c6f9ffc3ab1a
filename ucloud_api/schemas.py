"""What requests may contain. Unknown fields are refused (a typo must not be silently ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ucloud_common.record import Name
from ucloud_common.specs import Specs
from ucloud_common.sshkey import check_public_key
from ucloud_common.ipv6 import check_prefix
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
        return None if value is None else str(check_prefix(value))


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
