"""The hypervisor driver: what the agent may ask of the thing that runs its VMs, and what it sees.

The agent never touches QEMU directly: it observes each VM through `Hypervisor.observe` and acts
through the other calls, and everything it decides in between is pure (`ucloud_vm.decide`). The
contract is in the docstrings below; `QemuDriver` (ucloud_vm.qemu_driver) keeps it with real QEMU
processes, `FakeDriver` (ucloud_vm.fake_driver) in memory, for tests that replay hours in
milliseconds. Model: Nova's `nova/virt/driver.py` beside `nova/virt/fake.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_common.vm import VM, VNCEndpoint
from ucloud_common.vmstats import Usage


class RunState(StrEnum):
    """What a VM's process on this host is doing."""

    ABSENT = "absent"  # no process: never started, crashed, or stopped
    RUNNING = "running"  # the guest's CPUs run
    PAUSED = "paused"  # the CPUs are stopped (suspended, or started with them stopped); memory kept
    SHUTDOWN = "shutdown"  # the guest powered itself off; the process waits to be told what next
    GUEST_PANICKED = "guest-panicked"  # the guest kernel panicked (pvpanic): the guest is dead
    INTERNAL_ERROR = "internal-error"  # the emulator hit an internal error: the guest is dead
    IO_ERROR = "io-error"  # paused on a disk error (a full disk, a Ceph that cut the host off)
    INMIGRATE = "inmigrate"  # waiting for an incoming migration: no guest runs here yet
    POSTMIGRATE = "postmigrate"  # migrated away: the guest runs elsewhere, this copy must never resume
    UNRESPONSIVE = "unresponsive"  # the process lives but does not answer in time (hung, or very slow)


# States in which the process lives but will never run this guest again: it is stopped, never adopted.
GUEST_GONE = {
    RunState.GUEST_PANICKED: "the guest kernel panicked",
    RunState.INTERNAL_ERROR: "QEMU reported an internal error",
    RunState.INMIGRATE: "a QEMU waiting for a migration that is not happening",
    RunState.POSTMIGRATE: "a QEMU whose guest migrated away",
}
LIVE = frozenset({RunState.RUNNING, RunState.PAUSED})


@dataclass(frozen=True)
class Observation:
    state: RunState
    detail: str = ""
    """Why, in the hypervisor's words: the last line QEMU wrote before it vanished (ABSENT), or the
    timeout that made it UNRESPONSIVE."""
    nics: frozenset[str] | None = None
    """The MACs of the NICs the process has now (None: not known, e.g. no process)."""
    vnc: VNCEndpoint | None = None
    """The process's VNC server on TCP for Guacamole, with its password (None: it has none)."""


@dataclass(frozen=True)
class MigrationInfo:
    """What the source's hypervisor says of the migration it sends (QMP `query-migrate`)."""

    status: str  # "none" (never started), "setup", "active", "completed", "failed", "cancelled", …
    downtime_ms: int | None = None  # how long the guest was paused for the last copy (once completed)
    total_ms: int | None = None
    error: str = ""

    @property
    def sending(self) -> bool:
        return self.status not in ("none", "completed", "failed", "cancelled")


class DriverError(PermanentError):
    """The hypervisor failed a start for good (e.g. QEMU would not start with this configuration);
    `str()` says why, for the VM's `error`. Retrying the same call will not help."""


class DriverTimeout(TemporaryError):
    """The VM's process did not answer a command (in time, or at all); the call may or may not have
    taken effect. Temporary: observe again after `delay` and decide afresh."""


class Hypervisor(Protocol):
    """Runs VMs on this host. Every call is about one VM, named by its uuid, and safe to call from
    several threads for different VMs at once (never for the same VM at once: the agent's workers
    serialise per VM). A VM's process outlives the agent: a new driver instance finds it again."""

    accel: str  # what runs the guests' CPUs: "kvm" or "tcg"

    def observe(self, uuid: str) -> Observation:
        """What the VM's process is doing now. Never raises for the VM's own trouble: a missing
        process is ABSENT (with its last words as `detail`), one that does not answer within the
        driver's timeout is UNRESPONSIVE."""
        ...

    def follow(self, uuid: str, wake: Callable[[str], None]) -> bool:
        """Call `wake(uuid)`, from another thread, whenever the VM's process does something that
        `observe` would show (its guest stops, resumes, powers off, panics; the process exits) —
        until it exits. Idempotent and cheap; False if this process cannot be followed, and must
        then be observed now and then instead."""
        ...

    def close(self) -> None:
        """Let go of what `follow` holds (the processes go on)."""
        ...

    def start(self, vm: VM, disk: list[str], *, paused: bool, seed: Mapping[str, bytes],
              nics: Mapping[str, str], hdd: list[str] | None = None) -> None:
        """Start the VM's process on `disk` (its `-drive` options) and, when the VM has one, its HDD
        disk `hdd` (the guest's second disk), with CPUs stopped if `paused`,
        `seed` (cloud-init's NoCloud files, see ucloud_vm.cidata) on a read-only second drive,
        made afresh at every start (a key added to the VM reaches the guest at its next boot), and
        one virtio NIC per entry of `nics` (MAC → the tap it is plugged into, made beforehand).
        Returns once the process runs. On failure nothing runs and nothing is left but the log:
        raises DriverError (or the seed's SeedError) saying why. Must not be called while a process
        of the VM lives."""
        ...

    def usage(self, uuid: str) -> Usage | None:
        """What the VM's process has used since it started: CPU time, resident memory, each drive's
        and each NIC's I/O (None: no process). DriverTimeout if the process does not answer; the
        process's own figures are read without asking it."""
        ...

    def pause(self, uuid: str) -> None:
        """Stop the guest's CPUs (memory kept). DriverTimeout if the process does not answer."""
        ...

    def receive(self, vm: VM, disk: list[str], *, seed: Mapping[str, bytes], nics: Mapping[str, str],
                address: str, hdd: list[str] | None = None) -> str:
        """Start the VM's process as `start` does, but empty: waiting for the guest to arrive by live
        migration on `address` (this host's), on a port the hypervisor chooses. Returns where it
        listens, "host:port". The guest runs here (or stays paused, as it was) once it has arrived.
        DriverError as for `start`."""
        ...

    def send(self, uuid: str, to: str, downtime_ms: int, bandwidth_mib: int) -> None:
        """Start sending the running (or paused) guest to `to` ("host:port", where a `receive`
        listens) and return at once; `migration` tells how it goes. The guest runs here until the
        last copy, at most `downtime_ms` long (0 bandwidth: no limit). DriverTimeout as above."""
        ...

    def migration(self, uuid: str) -> MigrationInfo:
        """How the migration this process sends goes. DriverTimeout if it does not answer."""
        ...

    def cancel_migration(self, uuid: str) -> None:
        """Stop sending; the guest runs on here (a migration that completed meanwhile stays completed:
        look at `migration` after). DriverTimeout as above."""
        ...

    def plug(self, vm: VM, mac: str, tap: str) -> None:
        """Hot-plug `vm`'s virtio NIC with `mac` on `tap` (made beforehand) into the running VM, in
        the NIC's slot; the guest sees a new PCI device. Idempotent for a NIC already there. DriverTimeout as above;
        DriverError if the hypervisor refuses the NIC (the VM runs on without it)."""
        ...

    def unplug(self, uuid: str, mac: str) -> None:
        """Hot-unplug the NIC with `mac`, and return once the guest has let it go (a guest that
        does not answer the ACPI eject within the timeout: DriverTimeout, the unplug still pending).
        Idempotent for a NIC not there."""
        ...

    def resume(self, uuid: str) -> None:
        """Let a paused guest's CPUs run again. DriverTimeout if the process does not answer."""
        ...

    def reset(self, uuid: str) -> None:
        """Reset the guest, as the reset button of a machine would. DriverTimeout as above."""
        ...

    def powerdown(self, uuid: str) -> None:
        """Press the guest's power button (ACPI) and return at once; a paused guest is resumed
        first, as it could not see the button. Whether the guest obeys is seen later through
        `observe` (SHUTDOWN). DriverTimeout if the process does not answer."""
        ...

    def kill(self, uuid: str) -> None:
        """Stop the VM's process now, without asking the guest; returns when it is gone.
        Idempotent: an absent VM is success."""
        ...

    def leftovers(self) -> set[str]:
        """The uuids of VMs that have files (a process, a log, sockets) on this host."""
        ...

    def forget(self, uuid: str) -> None:
        """Remove the files of a VM whose process is gone (its disk is the storage backend's).
        Idempotent."""
        ...
