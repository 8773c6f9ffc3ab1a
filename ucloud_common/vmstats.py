"""A running VM's resource figures: `/v1/vmstats/<uuid>`, written only by the agent of the host its
QEMU runs on, every `vm_stats_interval`, on that host's lease (a dead host's figures vanish with it),
and read by the API for `GET /api/v1/vms/{uuid}/stats` (the API cannot reach a QEMU on another host).

A family of its own, not fields of the VM record: the figures change every few seconds, and a VM
record changed that often would wake every watcher of `/v1/vm/` (scheduler, agents, caches) and
race the API's and the scheduler's compare-and-swaps for nothing. Counters are totals since the
QEMU started (CPU seconds, bytes), as Prometheus wants them; a restart starts them again from 0.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ucloud_common.record import Family, Name, Record


class DiskIO(BaseModel):
    """One drive's totals since its QEMU started (QMP `query-blockstats`)."""

    model_config = ConfigDict(frozen=True)
    read_bytes: int = Field(0, ge=0)
    written_bytes: int = Field(0, ge=0)
    reads: int = Field(0, ge=0)
    writes: int = Field(0, ge=0)


class NicIO(BaseModel):
    """One NIC's totals, as the guest sees them (its tap counts the other way round)."""

    model_config = ConfigDict(frozen=True)
    received_bytes: int = Field(0, ge=0)
    sent_bytes: int = Field(0, ge=0)
    received_packets: int = Field(0, ge=0)
    sent_packets: int = Field(0, ge=0)


class Usage(BaseModel):
    """What a hypervisor measures of one VM's process."""

    model_config = ConfigDict(frozen=True)
    cpu_seconds: float = Field(0.0, ge=0, description="CPU time of the VM's process (guest and emulation), user "
                               "and system, since it started")
    rss_bytes: int = Field(0, ge=0, description="Resident memory of the VM's process")
    disks: dict[str, DiskIO] = Field(default_factory=dict, description="By drive id (disk0: the VM's disk)")
    nics: dict[str, NicIO] = Field(default_factory=dict, description="By MAC")


class VMStats(Record):
    vm: Name
    host: Name
    sampled_at: datetime
    usage: Usage


VM_STATS: Family[VMStats] = Family("/v1/vmstats/", VMStats, identity="vm")
