"""Resource sizes shared by VMs (what they need) and hosts (what they have)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# What QEMU is given at least (below it the tiny guest's kernel does not boot) and in what steps: the
# API accepts only a VM's ram that is a whole number of MiB from this minimum up, so what QEMU gets
# (`guest_ram_mib`) is exactly what the scheduler counts.
RAM_MIN_MIB = 64


class Specs(BaseModel):
    """cpu in virtual CPUs, the rest in GiB (ram may be fractional: test guests need 0.125)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: int = Field(ge=1, le=1024)
    ram: float = Field(gt=0, le=16384)
    ssd: int = Field(ge=0, le=1_000_000)
    hdd: int = Field(0, ge=0, le=1_000_000)


def guest_ram_mib(ram: float) -> int:
    """The MiB QEMU is given for `ram` GiB (a record older than the API's checks may hold less than
    the minimum, or a fraction of a MiB)."""
    return max(RAM_MIN_MIB, round(ram * 1024))


def described(specs: Specs) -> str:
    """The specs in the words of events and refusals: "2 CPUs, 1.5 GiB RAM, 10 GiB SSD, 0 GiB HDD"."""
    return f"{specs.cpu} CPUs, {specs.ram:g} GiB RAM, {specs.ssd} GiB SSD, {specs.hdd} GiB HDD"
