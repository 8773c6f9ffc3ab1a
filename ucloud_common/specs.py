"""Resource sizes shared by VMs (what they need) and hosts (what they have)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Specs(BaseModel):
    """cpu in virtual CPUs, the rest in GiB (ram may be fractional: test guests need 0.125)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: int = Field(ge=1, le=1024)
    ram: float = Field(gt=0, le=16384)
    ssd: int = Field(ge=0, le=1_000_000)
    hdd: int = Field(0, ge=0, le=1_000_000)
