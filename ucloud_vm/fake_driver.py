"""A hypervisor in memory, for tests: keeps the `Hypervisor` contract (ucloud_vm/driver.py) without
a process, and can be told to misbehave as real QEMUs do — crash, hang, ignore the power button,
answer slowly, fail to start, or start and then fail its first answer.

Time is `ucloud_common.clock`: under a simulated clock, a guest told to power off does so
`acpi_delay` simulated seconds later, and a slow answer costs simulated seconds. Model: Nova's
`nova/virt/fake.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ucloud_common import clock
from ucloud_common.vm import VM
from ucloud_common.vmstats import Usage
from ucloud_vm.driver import DriverError, DriverTimeout, MigrationInfo, Observation, RunState


# Where fake drivers (one per simulated host) wait for migrating guests: "address:port" → (driver, uuid).
_RECEIVERS: dict[str, tuple[FakeDriver, str]] = {}


@dataclass
class FakeGuest:
    state: RunState
    disk: tuple[str, ...]
    hdd: tuple[str, ...] | None  # the HDD disk's drive options (None: the VM has none)
    seed: dict[str, bytes]  # the cloud-init files it was started with
    nics: dict[str, str]  # MAC → tap
    powers_off_at: float | None = None  # clock.now() at which it obeys the ACPI button
    resets: int = 0
    fenced: bool = False  # cut off from its disk by a fence: it runs on, but can write nothing
    usage: Usage = field(default_factory=Usage)  # what `usage` reports (a test sets it)


@dataclass
class _Trouble:
    hung: bool = False  # observe is UNRESPONSIVE and every command times out, until `recover`
    failing: int = 0  # this many next calls (observe or command) time out
    slow: float = 0.0  # simulated seconds each call takes
    ignores_acpi: bool = False
    start_fails: str = ""  # the next start fails with this reason
    first_answer_fails: bool = False  # the next start succeeds, its first observe times out
    disk_full: bool = False  # every write fails: the guest pauses on an I/O error, and again if resumed
    lost_commands: set[str] = field(default_factory=set)  # the next command of each name times out, not done


@dataclass
class FakeDriver:
    accel: str = "fake"
    timeout: float = 5.0  # as the QEMU driver's QMP timeout
    acpi_delay: float = 3.0  # seconds a guest takes to power off after the button
    guests: dict[str, FakeGuest] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    last_words: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # "start u1", "kill u1", …: what the agent asked
    _trouble: dict[str, _Trouble] = field(default_factory=dict)
    _migrations: dict[str, MigrationInfo] = field(default_factory=dict)  # what each sender's QEMU would say
    _sending: dict[str, str] = field(default_factory=dict)  # uuid → where its guest is being sent

    # -- the contract ------------------------------------------------------------------------------

    def follow(self, uuid: str, wake: Callable[[str], None]) -> bool:
        return False  # observed by the agent's monitor: simulated time has no events to wait for

    def close(self) -> None:
        pass

    def observe(self, uuid: str) -> Observation:
        guest = self.guests.get(uuid)
        if guest is None:
            return Observation(RunState.ABSENT, self.last_words.get(uuid, ""))
        try:
            self._answer(uuid)
        except DriverTimeout as exc:
            return Observation(RunState.UNRESPONSIVE, str(exc))
        if guest.powers_off_at is not None and clock.now() >= guest.powers_off_at:
            guest.state, guest.powers_off_at = RunState.SHUTDOWN, None
        return Observation(guest.state, guest.state.value, frozenset(guest.nics))

    def start(self, vm: VM, disk: list[str], *, paused: bool, seed: Mapping[str, bytes],
              nics: Mapping[str, str], hdd: list[str] | None = None) -> None:
        self.calls.append(f"start {vm.uuid}")
        if vm.uuid in self.guests:
            raise DriverError(f"{vm.uuid} runs already")  # the agent must never start twice
        trouble = self._trouble.setdefault(vm.uuid, _Trouble())
        self.files.add(vm.uuid)
        if trouble.start_fails:
            reason, trouble.start_fails = trouble.start_fails, ""
            self.last_words[vm.uuid] = reason
            raise DriverError(f"QEMU failed to start: {reason}")
        if trouble.first_answer_fails:
            trouble.first_answer_fails, trouble.failing = False, trouble.failing + 1
        self.guests[vm.uuid] = FakeGuest(RunState.PAUSED if paused else RunState.RUNNING, tuple(disk),
                                         tuple(hdd) if hdd is not None else None, dict(seed), dict(nics))

    def receive(self, vm: VM, disk: list[str], *, seed: Mapping[str, bytes], nics: Mapping[str, str],
                address: str, hdd: list[str] | None = None) -> str:
        self.start(vm, disk, paused=False, seed=seed, nics=nics, hdd=hdd)
        self.guests[vm.uuid].state = RunState.INMIGRATE
        where = f"{address}:{len(_RECEIVERS) + 49152}"
        _RECEIVERS[where] = (self, vm.uuid)
        return where

    def send(self, uuid: str, to: str, downtime_ms: int, bandwidth_mib: int) -> None:
        self._command(uuid, "send")
        self._migrations[uuid] = MigrationInfo("active")
        self._sending[uuid] = to

    def migration(self, uuid: str) -> MigrationInfo:
        """A sent guest arrives at the first look after its send (if its receiver still waits)."""
        guest = self._command(uuid, "query-migrate")
        info = self._migrations.get(uuid, MigrationInfo("none"))
        if info.status == "active":
            receiver, name = _RECEIVERS.pop(self._sending.pop(uuid), (None, ""))
            arrived = receiver.guests.get(name) if receiver else None
            if arrived is None or arrived.state is not RunState.INMIGRATE:
                info = MigrationInfo("failed", error="the receiving side is gone")
            else:
                arrived.state, guest.state = guest.state, RunState.POSTMIGRATE
                info = MigrationInfo("completed", downtime_ms=1, total_ms=10)
            self._migrations[uuid] = info
        return info

    def cancel_migration(self, uuid: str) -> None:
        self._command(uuid, "migrate_cancel")
        if self._migrations.get(uuid, MigrationInfo("none")).sending:
            self._migrations[uuid] = MigrationInfo("cancelled")

    def usage(self, uuid: str) -> Usage | None:
        guest = self.guests.get(uuid)
        if guest is None:
            return None
        # Only a hung guest fails here: a sample must not use up the failures a test set for the agent's calls.
        if self._trouble.get(uuid, _Trouble()).hung:
            raise DriverTimeout(f"{uuid}: no answer within {self.timeout:.0f} s", self.timeout)
        return guest.usage

    def pause(self, uuid: str) -> None:
        self._command(uuid, "pause").state = RunState.PAUSED

    def resume(self, uuid: str) -> None:
        guest = self._command(uuid, "resume")
        full = self._trouble.setdefault(uuid, _Trouble()).disk_full
        guest.state = RunState.IO_ERROR if full else RunState.RUNNING

    def plug(self, vm: VM, mac: str, tap: str) -> None:
        self._command(vm.uuid, "plug").nics[mac] = tap

    def unplug(self, uuid: str, mac: str) -> None:
        self._command(uuid, "unplug").nics.pop(mac, None)

    def reset(self, uuid: str) -> None:
        guest = self._command(uuid, "reset")
        guest.state, guest.resets = RunState.RUNNING, guest.resets + 1

    def powerdown(self, uuid: str) -> None:
        guest = self._command(uuid, "powerdown")
        guest.state = RunState.RUNNING
        if not self._trouble.setdefault(uuid, _Trouble()).ignores_acpi:
            guest.powers_off_at = clock.now() + self.acpi_delay

    def kill(self, uuid: str) -> None:
        self.calls.append(f"kill {uuid}")
        self.guests.pop(uuid, None)

    def leftovers(self) -> set[str]:
        return set(self.files)

    def forget(self, uuid: str) -> None:
        self.files.discard(uuid)
        self.last_words.pop(uuid, None)

    # -- misbehaving, as told by a test --------------------------------------------------------------

    def crash(self, uuid: str, last_words: str = "qemu: terminated by signal 9") -> None:
        self.guests.pop(uuid, None)
        self.last_words[uuid] = last_words

    def enter(self, uuid: str, state: RunState) -> None:
        """The guest's process enters `state` by itself: SHUTDOWN (the guest powered off),
        GUEST_PANICKED, IO_ERROR, PAUSED, …"""
        self.guests[uuid].state = state

    def fill_disk(self, uuid: str, full: bool = True) -> None:
        """The VM's disk takes no more writes (the guest pauses on an I/O error), or takes them again."""
        self._trouble.setdefault(uuid, _Trouble()).disk_full = full
        if full:
            self.guests[uuid].state = RunState.IO_ERROR

    def hang(self, uuid: str) -> None:
        self._trouble.setdefault(uuid, _Trouble()).hung = True

    def recover(self, uuid: str) -> None:
        self._trouble[uuid] = _Trouble()

    def fail_next(self, uuid: str, calls: int = 1) -> None:
        """The next `calls` calls about `uuid` (observe or commands) time out."""
        self._trouble.setdefault(uuid, _Trouble()).failing += calls

    def lose_next(self, uuid: str, command: str) -> None:
        """The next `command` ("pause", "reset", …) times out without taking effect."""
        self._trouble.setdefault(uuid, _Trouble()).lost_commands.add(command)

    def slow_down(self, uuid: str, seconds: float) -> None:
        """Every call about `uuid` takes `seconds` of (simulated) time; beyond `timeout`, it times out."""
        self._trouble.setdefault(uuid, _Trouble()).slow = seconds

    def ignore_acpi(self, uuid: str) -> None:
        self._trouble.setdefault(uuid, _Trouble()).ignores_acpi = True

    def fail_next_start(self, uuid: str, reason: str) -> None:
        self._trouble.setdefault(uuid, _Trouble()).start_fails = reason

    def fail_first_answer(self, uuid: str) -> None:
        """The next start succeeds, but the first look at it times out (QEMU still booting, say)."""
        self._trouble.setdefault(uuid, _Trouble()).first_answer_fails = True

    # -- inside --------------------------------------------------------------------------------------

    def _answer(self, uuid: str) -> None:
        trouble = self._trouble.get(uuid)
        if trouble is None:
            return
        if trouble.slow and isinstance(simulated := clock.current(), clock.SimClock):
            simulated.advance(min(trouble.slow, self.timeout))
        if trouble.hung or trouble.slow >= self.timeout:
            raise DriverTimeout(f"{uuid}: no answer within {self.timeout:.0f} s", self.timeout)
        if trouble.failing:
            trouble.failing -= 1
            raise DriverTimeout(f"{uuid}: no answer within {self.timeout:.0f} s", self.timeout)

    def _command(self, uuid: str, name: str) -> FakeGuest:
        self.calls.append(f"{name} {uuid}")
        guest = self.guests.get(uuid)
        if guest is None:
            raise DriverTimeout(f"{uuid}: no QEMU to answer {name}", self.timeout)
        self._answer(uuid)
        trouble = self._trouble.get(uuid)
        if trouble is not None and name in trouble.lost_commands:
            trouble.lost_commands.discard(name)
            raise DriverTimeout(f"{uuid}: no answer to {name} within {self.timeout:.0f} s", self.timeout)
        return guest
