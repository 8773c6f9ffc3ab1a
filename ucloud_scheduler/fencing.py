"""Fencing: making sure a dead host can no longer write to the disks of its VMs before they are
started elsewhere. A host that only looks dead (a cut network, a stalled agent) would otherwise run
the same VM twice on one shared disk and corrupt it.

A fence is tried only for VMs on shared storage; a VM whose disk is local to the dead host waits
for the host to return. The Ceph issue adds the RBD fence (blocklist the host's client, break its
locks); operators may add a command (IPMI power-off, a PDU) through `UCLOUD_FENCE_COMMAND`.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from typing import Protocol

from ucloud_common.host import Host

log = logging.getLogger(__name__)


class FenceFailed(Exception):
    pass


class Fence(Protocol):
    def fence(self, host: Host) -> None:
        """Cut `host` off from shared storage, or raise `FenceFailed` saying why. Idempotent: it
        may be called again for a host already fenced (e.g. after a scheduler restart)."""


class NoFence:
    """What runs when no fence is configured: refuses, so shared-storage VMs of a dead host stay
    KILLED (safe) until an operator configures fencing or the host returns."""

    def fence(self, host: Host) -> None:
        raise FenceFailed("no fencing is configured (set UCLOUD_FENCE_COMMAND)")


class CommandFence:
    """Runs the operator's command with the host's name and address appended; exit 0 means fenced."""

    def __init__(self, command: str, timeout: float) -> None:
        self._argv = shlex.split(command)
        self._timeout = timeout

    def fence(self, host: Host) -> None:
        argv = [*self._argv, host.name, host.address]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self._timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FenceFailed(f"fence command {argv[0]} failed: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise FenceFailed(f"fence command {argv[0]} exited {result.returncode}: {detail[0]}")
        log.info("fenced host %s with %s", host.name, argv[0])
