"""Fencing: making sure a dead host can no longer write to the disks of its VMs before they are
started elsewhere. A host that only looks dead (a cut network, a stalled agent) would otherwise run
the same VM twice on one shared disk and corrupt it.

A fence is tried only for VMs on shared storage; a VM whose disk is local to the dead host waits
for the host to return. With Ceph configured, the RBD fence breaks the exclusive locks the host's
QEMUs held on their disks, which makes Ceph blocklist that client; operators may add a command
(IPMI power-off, a PDU) through `UCLOUD_FENCE_COMMAND`. Every configured fence must succeed.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from typing import Protocol

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.host import Host
from ucloud_common.vm import VM

log = logging.getLogger(__name__)


class FenceFailed(Exception):
    pass


class Fence(Protocol):
    def fence(self, host: Host, vms: list[VM]) -> None:
        """Cut `host` off from the shared disks of `vms` (its VMs), or raise `FenceFailed` saying
        why. Idempotent: it may be called again for a host already fenced (a scheduler restart)."""


class NoFence:
    """What runs when no fence is configured: refuses, so shared-storage VMs of a dead host stay
    KILLED (safe) until an operator configures fencing or the host returns."""

    def fence(self, host: Host, vms: list[VM]) -> None:
        raise FenceFailed("no fencing is configured (set UCLOUD_FENCE_COMMAND or UCLOUD_CEPH_CONF)")


class CommandFence:
    """Runs the operator's command with the host's name and address appended; exit 0 means fenced."""

    def __init__(self, command: str, timeout: float) -> None:
        self._argv = shlex.split(command)
        self._timeout = timeout

    def fence(self, host: Host, vms: list[VM]) -> None:
        argv = [*self._argv, host.name, host.address]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self._timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FenceFailed(f"fence command {argv[0]} failed: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise FenceFailed(f"fence command {argv[0]} exited {result.returncode}: {detail[0]}")
        log.info("fenced host %s with %s", host.name, argv[0])


class RBDFence:
    """Breaks the locks on the host's VM disks: Ceph blocklists the client that held them."""

    def __init__(self, ceph: Ceph, vm_pool: str) -> None:
        self._ceph = ceph
        self._vm_pool = vm_pool

    def fence(self, host: Host, vms: list[VM]) -> None:
        for vm in vms:
            if vm.storage != "rbd":
                continue
            try:
                holders = self._ceph.break_locks(self._vm_pool, vm.uuid)
            except CephError as exc:
                raise FenceFailed(str(exc)) from None
            for holder in holders:
                log.info("fenced host %s: broke %s's lock on %s/%s (blocklisted)", host.name, holder,
                         self._vm_pool, vm.uuid)


class AllFences:
    def __init__(self, fences: list[Fence]) -> None:
        self._fences = fences

    def fence(self, host: Host, vms: list[VM]) -> None:
        for fence in self._fences:
            fence.fence(host, vms)
