"""What requests may contain. Unknown fields are refused (a typo must not be silently ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
