"""What a host gives to its VMs: one rule, shared by the scheduler (placing) and the API (showing).

A VM holds its host's resources as long as it is placed on that host (`VM.host`), whatever its status: a
STOPPED VM may start again, a KILLED VM whose disk is local waits to start there again.
"""

from __future__ import annotations

from collections.abc import Iterable

from ucloud_common.specs import Specs
from ucloud_common.vm import VM

# Storage backends whose disks every host reaches: only their VMs may restart on another host.
SHARED_STORAGE = frozenset({"rbd"})

ZERO = Specs.model_construct(cpu=0, ram=0.0, ssd=0, hdd=0)


def add(a: Specs, b: Specs, sign: int = 1) -> Specs:
    # model_construct: sums of valid specs need no validation, and this runs per placement.
    return Specs.model_construct(cpu=a.cpu + sign * b.cpu, ram=a.ram + sign * b.ram,
                                 ssd=a.ssd + sign * b.ssd, hdd=a.hdd + sign * b.hdd)


def allocations(vms: Iterable[VM]) -> dict[str, Specs]:
    """host name → the sum of the specs of the VMs placed on it."""
    totals: dict[str, Specs] = {}
    for vm in vms:
        if vm.host:
            totals[vm.host] = add(totals.get(vm.host, ZERO), vm.specs)
    return totals


def resize_delta(vm: VM) -> Specs:
    """What the VM's asked-for resize would take from its host beyond what it holds now (negative where
    it gives back: fewer CPUs, less RAM); ZERO without one. The one place a resize's cost is reckoned:
    the scheduler checks it against the host's room."""
    return add(vm.resize, vm.specs, -1) if vm.resize is not None else ZERO
