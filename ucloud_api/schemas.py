"""What requests may contain. Unknown fields are refused (a typo must not be silently ignored), and
types are strict: `"2"` or `true` is not a number, `0` is not a boolean (the OpenAPI document says
integer, number, boolean, and the API means it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ucloud_common.quota import QuotaSettings
from ucloud_common.record import Name
from ucloud_common.specs import RAM_MIN_MIB, Specs
from ucloud_common.console import ConsoleKind
from ucloud_common.sshkey import MAX_KEY_LINE, parse_public_key
from ucloud_common.ipv6 import check_prefix
from ucloud_common.user import Role, UserName
from ucloud_common.vm import NIC_SLOTS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# The SSH keys copied into one VM record: with keys of at most 4 KiB, a VM record stays under 48 KiB
# and its cloud-init user-data under the agent's 64 KiB (`ucloud_vm.cidata.MAX_USER_DATA`).
MAX_VM_KEYS = 10


class VMSpecs(Specs):
    """A VM's specs as a request may ask for them: at least one GiB of SSD (the image is cloned onto
    it), and ram in whole MiB from RAM_MIN_MIB up, so that what QEMU gets is what is counted."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    ssd: int = Field(ge=1, le=1_000_000)
    ram: float = Field(ge=RAM_MIN_MIB / 1024, le=16384, description=f"GiB, in steps of 1 MiB (1/1024), at "
                       f"least {RAM_MIN_MIB} MiB")

    @field_validator("ram")
    @classmethod
    def _whole_mib(cls, value: float) -> float:
        return _whole_mib(value)

    def as_specs(self) -> Specs:
        return Specs(**self.model_dump())


def _whole_mib(value: float) -> float:
    if value * 1024 != round(value * 1024):
        raise ValueError("must be a whole number of MiB (a multiple of 1/1024 GiB, e.g. 0.125 or 1.5)")
    return value


class Resize(Strict):
    """New specs for a STOPPED VM: only those that change (the others stay); disks only grow."""

    cpu: int | None = Field(None, ge=1, le=1024)
    ram: float | None = Field(None, ge=RAM_MIN_MIB / 1024, le=16384, description=f"GiB, in steps of 1 MiB "
                              f"(1/1024), at least {RAM_MIN_MIB} MiB")
    ssd: int | None = Field(None, ge=1, le=1_000_000, description="GiB, at least the VM's ssd now")
    hdd: int | None = Field(None, ge=0, le=1_000_000, description="GiB, at least the VM's hdd now")

    @field_validator("ram")
    @classmethod
    def _whole_mib(cls, value: float | None) -> float | None:
        return None if value is None else _whole_mib(value)

    @model_validator(mode="after")
    def _something(self) -> Resize:
        if not self.model_fields_set:
            raise ValueError("name at least one of cpu, ram, ssd, hdd")
        return self

    def applied_to(self, specs: Specs) -> Specs:
        return specs.model_copy(update=self.model_dump(exclude_none=True))


class VMCreate(Strict):
    name: Name
    specs: VMSpecs
    image: Name = Field(description="uuid of a CREATED image that is public or yours")
    storage: Literal["local", "rbd"] = "local"
    ssh_keys: list[Name] = Field(default_factory=list, max_length=MAX_VM_KEYS, description="names of your SSH "
                                 "keys, copied into the VM")
    networks: list[Name] = Field(default_factory=list, max_length=len(NIC_SLOTS),
                                description="uuids of your networks")
    anti_affinity: Name | None = Field(None, description="VMs of one group are placed on different hosts")


class ConsoleRequest(Strict):
    type: ConsoleKind = Field(strict=False, description="vnc (the screen) or serial (the first serial port)")


class Migrate(Strict):
    host: Name | None = Field(None, description="target host; the scheduler chooses when absent")


# Long enough that guessing within the login throttle is hopeless; short enough that hashing one is cheap
# to refuse (Argon2 itself takes any length).
Password = Annotated[str, Field(min_length=8, max_length=1024, description="8 to 1024 characters")]


class UserCreate(Strict):
    name: UserName
    role: Role = Field(Role.USER, strict=False)  # from JSON's string: strict would want the enum itself
    password: Password | None = Field(None, description="for `POST /api/v1/login`; none: the user logs in "
                                      "with tokens only until one is set")


class PasswordChange(Strict):
    password: Password
    current_password: str | None = Field(None, max_length=1024, description="needed when users change "
                                         "their own password and have one (an admin changing another's: not)")


class QuotaUpdate(Strict, QuotaSettings):
    """The resources to set; a resource absent stays as it is, null returns it to the default."""


class Login(Strict):
    name: Name
    password: str = Field(max_length=1024)


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$", description="your label "
                      "for the token, e.g. laptop")
    expires_in: int | None = Field(None, ge=60, le=5 * 366 * 86400, description="seconds until it stops "
                                   "working; none: until revoked")


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
    key: str = Field(max_length=MAX_KEY_LINE, description="an OpenSSH public key line: ed25519, RSA of "
                     "1024-16384 bits, ecdsa (NIST curves), or their security-key forms")

    @field_validator("key")
    @classmethod
    def _openssh(cls, value: str) -> str:
        return parse_public_key(value).line


class ImageCreate(Strict):
    name: Name
    file: Name = Field(description="uuid of one of your files")
    store: Name = Field(description="the image store to create it in")
    public: bool = Field(False, description="visible to every user (admins only)")


class Maintenance(Strict):
    on: bool
    drain: bool = Field(False, description="with on: move every VM away (live, or placed elsewhere if stopped)")
