"""What the agent does next for one VM, decided from what is asked and what is seen — and nothing else.

`decide(vm, seen, now, settings)` is pure: the VM's record (`requested`, `generation`, `status`,
…), what the hypervisor shows of its process, and the time, give one `Step`: the status to record,
the other fields to write, the action to take, the sentence for the VM's event log, and when to
look again. The agent records the step first (compare-and-swap: a VM that changed meanwhile is
decided again, nothing acted on a stale decision) and then acts; whatever the action changes is
seen by the next look, never assumed. Long actions never hold a worker: an ACPI shutdown is the
button pressed and a look again at the deadline.

Every status change a step makes is one `TRANSITIONS[AGENT]` allows: tests/unit/test_decide.py
walks every combination of status × requested × run state × generations × restarts to keep it so.

Reading order: `decide` dispatches on what is seen; each helper handles one situation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ucloud_common.config import Settings
from ucloud_common.console import SHOWN
from ucloud_common.states import MigrationPhase, Party, Requested, Status, check_migration_step
from ucloud_common.vm import VM, Migration, placed_on
from ucloud_vm.driver import GUEST_GONE, LIVE, MigrationInfo, Observation, RunState

S = Status

# What a VM that wants to run may be requested: a suspended VM runs with its CPUs stopped.
WANTS_TO_RUN = frozenset({Requested.RUNNING, Requested.SUSPENDED})
# Statuses in which the VM's process is expected to be there.
EXPECTS_PROCESS = frozenset({S.STARTING, S.RUNNING, S.SUSPENDED, S.MIGRATING})


class Act(StrEnum):
    """What the agent does after recording a step."""

    NOTHING = "nothing"
    CREATE_DISK = "create disk"  # make the VM's disk (idempotent), nothing more
    START = "start"  # make the disk, then start the process (CPUs stopped if requested SUSPENDED)
    PAUSE = "pause"
    RESUME = "resume"
    RESET = "reset"
    PLUG = "plug"  # hot-plug the NIC `Step.nic` names (its network and tap made first)
    UNPLUG = "unplug"  # hot-unplug the NIC `Step.nic` names (then its tap goes)
    POWERDOWN = "powerdown"  # press the ACPI button
    KILL = "kill"
    DELETE = "delete"  # stop the process, delete the disk and files, remove the record
    RECEIVE = "receive"  # (the target) start a process that waits for the migrating guest, record where
    SEND = "send"  # (the source) start sending the guest to where the target listens
    CANCEL_MIGRATION = "cancel migration"  # (the source) stop sending; the guest runs on here


@dataclass(frozen=True)
class Seen:
    """What the agent saw of the VM before deciding."""

    run: Observation
    fenced: bool = False
    """The scheduler fenced this host (cut it off from shared storage) while it was thought dead;
    only looked up where it matters: a KILLED shared-storage VM whose process lives."""
    networked: bool = False
    """This host gives VMs their NICs (it has an underlay): the NICs a running VM has are then
    kept equal to its record's, by hot-plug."""
    migration: MigrationInfo | None = None
    """How the migration the VM's process sends goes; only looked up while it may send one."""


@dataclass(frozen=True)
class Step:
    act: Act = Act.NOTHING
    status: Status | None = None  # the status to record (None: unchanged)
    fields: dict[str, Any] = field(default_factory=dict)  # other fields to record with it
    event: str = ""  # the sentence for the VM's event log
    note: str = ""  # why nothing is recorded, for the agent's log only
    look_again: float | None = None  # seconds after which to decide again; None: on the next change
    disk_clients: bool = False  # record who holds the VM's disk now (after its process started)
    # Recorded only once the act succeeded (with the event): for an act whose effect the next look
    # cannot see — a reset — so that one that failed is not marked done.
    confirm: dict[str, Any] = field(default_factory=dict)
    nic: str = ""  # the MAC of the NIC a PLUG or UNPLUG is about

    def writes(self) -> bool:
        return self.status is not None or bool(self.fields) or self.disk_clients

    def sentence(self) -> str:
        return self.event or self.note or "nothing to do"


def decide(vm: VM, seen: Seen, now: datetime, settings: Settings) -> Step:
    """The next step for `vm`, placed on this host, seen as `seen` at `now`."""
    step = _decide(vm, seen, now, settings)
    if step.status not in (None, vm.status) and "deadline" not in step.fields:
        # A deadline belongs to the status that set it (a shutdown, a backoff, a retry): never
        # read again with another meaning.
        step = replace(step, fields={**step.fields, "deadline": None})
    if vm.migration is not None and step.status not in (None, S.MIGRATING, *SHOWN) and "migration" not in step.fields:
        # Stopped, crashed, deleted, failed: a migration ends with the process that sent it (its
        # target's agent then stops the copy that waited for it).
        step = replace(step, fields={**step.fields, **_migration_ended(vm)})
    if step.status not in (None, vm.status, *SHOWN) and vm.guacamole is not None and "guacamole" not in step.fields:
        # The TCP VNC server (and its password) goes with the QEMU that had it: a VM stopping,
        # crashed or starting again (here or on another host) has none until it runs again.
        step = replace(step, fields={**step.fields, "guacamole": None})
    return step


def _decide(vm: VM, seen: Seen, now: datetime, settings: Settings) -> Step:
    state = seen.run.state
    if vm.status is S.REQUESTED_NEW:  # the scheduler's to move, even with a host named (never written so)
        return Step(note="not scheduled yet")
    if vm.requested is Requested.DELETED or vm.status is S.DELETING:
        if vm.migration is not None and seen.migration is not None and seen.migration.sending:
            return Step(Act.CANCEL_MIGRATION, note="deleted while it migrates: cancelling the migration first",
                        look_again=0.2)
        return _delete(vm, now)
    if vm.migration is not None and (step := _outgoing(vm, vm.migration, seen, now, settings)) is not None:
        return step
    if state is RunState.UNRESPONSIVE:
        if vm.status is S.STOPPING:  # a hung guest is stopped hard at the deadline all the same
            return _stopping(vm, now, settings)
        return Step(note=f"its process does not answer ({seen.run.detail}); looking again",
                    look_again=settings.qmp_timeout)
    if state is RunState.IO_ERROR:
        return _io_error(vm, seen, now, settings)
    if state in GUEST_GONE:
        return _guest_gone(vm, GUEST_GONE[state], now, settings)
    if state is RunState.SHUTDOWN:
        return _powered_off(vm)
    if state is RunState.ABSENT:
        what = "QEMU exited while starting" if vm.status is S.STARTING else "QEMU exited unexpectedly"
        return _without_process(vm, what + (f": {seen.run.detail}" if seen.run.detail else ""), now, settings)
    return _with_process(vm, seen, now, settings)


def _delete(vm: VM, now: datetime) -> Step:
    if vm.status is S.ERROR and vm.deadline is not None and now < vm.deadline:
        # A deletion that failed (a storage error) is tried again later, not in a hot loop.
        return Step(note="deleting again after the last attempt failed", look_again=_seconds(vm.deadline - now))
    return Step(Act.DELETE, None if vm.status is S.DELETING else S.DELETING, event="deleting")


def _guest_gone(vm: VM, reason: str, now: datetime, settings: Settings) -> Step:
    """The process lives but will never run this guest again: stop it, and record what that means
    (a crash for a VM that should run), as if it had vanished."""
    step = _without_process(vm, reason, now, settings)
    if step.status is None or step.act is not Act.NOTHING:
        return Step(Act.KILL, note=f"stopping a process that cannot run the guest: {reason}", look_again=0)
    return Step(Act.KILL, step.status, step.fields, step.event, look_again=0)


def _io_error(vm: VM, seen: Seen, now: datetime, settings: Settings) -> Step:
    """QEMU paused the guest on a disk write error (a full disk or pool; Ceph unreachable): the
    guest is intact, and resumed once the disk takes writes again — tried every `io_retry`. A fenced
    one, or one that should not run any more, is stopped instead."""
    if seen.fenced or vm.status not in (S.RUNNING, S.SUSPENDED) or vm.requested not in WANTS_TO_RUN:
        return _guest_gone(vm, "QEMU stopped on a disk I/O error", now, settings)
    if vm.deadline is not None and now < vm.deadline:
        return Step(note="paused on a disk I/O error; resuming it later", look_again=_seconds(vm.deadline - now))
    error = "paused on a disk I/O error (a full disk?); resumed as soon as the disk takes writes again"
    return Step(Act.RESUME, fields={"error": error, "deadline": now + timedelta(seconds=settings.io_retry)},
                event="" if vm.error == error else error, note="paused on a disk I/O error; trying to resume it",
                look_again=settings.io_retry)


def _powered_off(vm: VM) -> Step:
    """The guest powered itself off (its process waits, `-no-shutdown`): the VM is STOPPED — also
    when it should run; a power-off from inside is the owner's decision too."""
    if vm.status is S.STOPPED:
        return Step(Act.KILL, note="stopping the process of a stopped VM")
    if vm.status is S.MIGRATING:  # MIGRATING cannot end STOPPED: through RUNNING, then as below
        return Step(status=S.RUNNING, note="the guest powered off during a migration", look_again=0)
    if vm.status is S.STOPPING:  # as asked: the guest obeyed the button
        stopped = _stopped(vm, "stopped: the guest powered off (ACPI)")
        return Step(Act.KILL, stopped.status, stopped.fields, stopped.event, look_again=stopped.look_again)
    if vm.requested is Requested.STOPPED:
        event = "stopped"
    else:
        event = "stopped: the guest powered off"
    return Step(Act.KILL, S.STOPPED, _observed(vm, error=""), event)


def _without_process(vm: VM, crash: str, now: datetime, settings: Settings) -> Step:
    """No process runs the guest; `crash` says why, should the VM have been running."""
    wants_to_run = vm.requested in WANTS_TO_RUN
    new_request = vm.generation > vm.observed_generation
    if vm.status is S.STARTING and vm.deadline is not None and wants_to_run:
        # The start met a temporary failure (a Ceph that did not answer): no crash, tried again.
        if now < vm.deadline:
            return Step(note="starting again after a temporary failure", look_again=_seconds(vm.deadline - now))
        return _start(vm, restarts=vm.restarts, event="restarted" if vm.restarts else "started")
    if vm.status in EXPECTS_PROCESS:
        if not wants_to_run:
            if vm.status is S.MIGRATING:  # MIGRATING may only end RUNNING, KILLED or in ERROR
                return Step(status=S.KILLED, fields={"error": "its process exited during a migration"},
                            event="killed: its process exited during a migration", look_again=0)
            return _stopped(vm, "stopped")
        return _crashed(vm, crash, now, settings)
    if vm.status is S.STOPPING:
        return _stopped(vm, "stopped: QEMU exited")
    if vm.status is S.SCHEDULED_DEPLOY:
        if wants_to_run:
            return _start(vm, restarts=0, event="started")
        return Step(Act.CREATE_DISK, S.STOPPED, _observed(vm, error=""), "stopped")
    if vm.status is S.KILLED:
        if not wants_to_run:
            return _stopped(vm, "stopped")
        restarts = _in_a_row(vm, now, settings)
        if restarts >= settings.max_restarts:
            return Step(status=S.ERROR, fields={"error": f"QEMU died {restarts + 1} times in a row; last: {vm.error}"},
                        event="gave up restarting")
        if vm.deadline is not None and now < vm.deadline:
            return Step(note="waiting before restarting it", look_again=_seconds(vm.deadline - now))
        return _start(vm, restarts=restarts + 1, event="restarted")
    if new_request and wants_to_run:  # STOPPED or ERROR, and asked to run
        return _start(vm, restarts=0, event="started")
    if new_request:  # asked to stop: done already
        return _stopped(vm, "stopped") if vm.status is S.ERROR else Step(fields=_observed(vm))
    return Step()  # STOPPED, or ERROR, as asked: nothing to do until a new request


def _with_process(vm: VM, seen: Seen, now: datetime, settings: Settings) -> Step:
    """Its process runs the guest (RUNNING or PAUSED)."""
    running = seen.run.state is RunState.RUNNING
    wants_to_run = vm.requested in WANTS_TO_RUN
    if vm.status is S.STARTING:
        return Step(status=S.RUNNING if running else S.SUSPENDED,
                    fields=_observed(vm, error="", started_at=now, guacamole=seen.run.vnc), disk_clients=True,
                    note="its QEMU answers")
    if vm.status in (S.SCHEDULED_DEPLOY, S.KILLED, S.ERROR, S.STOPPED):
        return _found_running(vm, seen, wants_to_run)
    if vm.status is S.STOPPING:
        return _stopping(vm, now, settings)
    if vm.status is S.MIGRATING:  # nothing migrates it now: record what the process shows
        return Step(status=S.RUNNING, fields=_observed(vm), event="running: no migration in progress", look_again=0)
    # RUNNING or SUSPENDED
    if vm.guacamole != seen.run.vnc:  # an agent restarted with another setting sees what its QEMU has
        return Step(fields={"guacamole": seen.run.vnc}, note="recorded its TCP VNC server", look_again=0)
    if vm.requested is Requested.STOPPED:
        return Step(Act.POWERDOWN, S.STOPPING, {"deadline": now + timedelta(seconds=settings.shutdown_timeout)},
                    "shutting down (ACPI)", look_again=settings.shutdown_timeout)
    if vm.requested is Requested.SUSPENDED:
        if running:
            return Step(Act.PAUSE, S.SUSPENDED, _observed(vm), "suspended")
        return Step(status=S.SUSPENDED, fields=_observed(vm)) if _differs(vm, S.SUSPENDED) else Step()
    reboot = vm.reboot_generation > vm.observed_generation
    if not running:
        # Resumed first; a reboot asked meanwhile stays pending (not observed) and is the next step.
        return Step(Act.RESUME, S.RUNNING, {} if reboot else _observed(vm), "resumed",
                    look_again=0 if reboot else None)
    if reboot:
        return Step(Act.RESET, event="rebooted", confirm=_observed(vm))
    if vm.error:  # resumed after a disk error: the disk takes writes again
        return Step(status=S.RUNNING, fields=_observed(vm, error=""), event="running again")
    if _differs(vm, S.RUNNING):
        return Step(status=S.RUNNING, fields=_observed(vm))
    return _nics(vm, seen)


# -- live migration -------------------------------------------------------------------------------
#
# The source (the host the VM is placed on) decides here; the target's agent in `decide_incoming`.
# They meet only in the VM's `migration` record: the scheduler makes it CHOSEN, the target starts a
# QEMU that waits for the guest and records LISTENING with its address, the source sends (MIGRATING)
# and, once QEMU says the guest has arrived, hands the VM over (`hostname` names the target) and
# ends the record; any failure on either side ends it with the VM running on the source.

_POLL = 0.2  # how often the source looks at a migration it sends


def _outgoing(vm: VM, migration: Migration, seen: Seen, now: datetime, settings: Settings) -> Step | None:
    """The source's step for a VM with a migration under way; None: the ordinary step (a process that
    vanished, hung or failed: which ends the migration, see `decide`)."""
    info = seen.migration
    if info is not None and info.status == "completed":
        return _handed_over(vm, migration, info)
    if seen.run.state not in LIVE:
        return None
    sending = info is not None and info.sending
    why = _abort_reason(vm, migration, now, settings)
    if why:
        if sending:
            return Step(Act.CANCEL_MIGRATION, note=f"cancelling the migration: {why}", look_again=_POLL)
        return _migration_failed(vm, migration, seen, why)
    if migration.phase is MigrationPhase.CHOSEN:
        if vm.deadline is None:  # the target's time to get ready starts now
            return Step(fields={"deadline": now + timedelta(seconds=settings.migration_prepare_timeout)},
                        note=f"waiting for {migration.target} to get ready", look_again=settings.migration_prepare_timeout)
        return Step(note=f"waiting for {migration.target} to get ready", look_again=_seconds(vm.deadline - now))
    if migration.phase is MigrationPhase.LISTENING:
        differ = seen.run.nics is not None and seen.run.nics != {nic.mac for nic in vm.networks}
        if seen.networked and (differ or vm.nic_errors):
            # The target gave the guest the record's NICs; this QEMU has others (a hot-plug or
            # unplug still to come, a NIC it could not be given): the target could not load its state.
            return _migration_failed(vm, migration, seen, "its NICs here are not yet those of its record "
                                     "(a NIC attached or detached meanwhile, or one it could not be given)")
        check_migration_step(Party.SOURCE, migration.phase, MigrationPhase.RUNNING)
        return Step(Act.SEND, S.MIGRATING, {
            "migration": migration.model_copy(update={"phase": MigrationPhase.RUNNING}),
            "deadline": now + timedelta(seconds=settings.migration_timeout)},
            f"migrating to {migration.target}", look_again=_POLL)
    if info is not None and info.status in ("failed", "cancelled"):
        return _migration_failed(vm, migration, seen, f"QEMU: {info.error or info.status}")
    if not sending:  # recorded RUNNING, but the process sends nothing (the send was lost): send again
        return Step(Act.SEND, note=f"sending to {migration.target} again", look_again=_POLL)
    return Step(note=f"sending to {migration.target} ({info.status if info else 'unknown'})", look_again=_POLL)


def _abort_reason(vm: VM, migration: Migration, now: datetime, settings: Settings) -> str:
    # The admin's cancel first: sending stops at once, the target's copy ends with it and says so,
    # and that is the cancel's consequence, not the reason.
    if migration.request and not vm.migrate_to:
        return "cancelled by an admin"
    if migration.phase is MigrationPhase.FAILED:
        return f"the target {migration.target} could not receive it: {migration.error}"
    if vm.requested not in WANTS_TO_RUN:
        return f"the VM was asked to be {vm.requested}"
    if vm.deadline is not None and now >= vm.deadline and migration.phase is not MigrationPhase.LISTENING:
        if migration.phase is MigrationPhase.CHOSEN:
            return f"{migration.target} did not get ready within {settings.migration_prepare_timeout:.0f} s"
        return f"it did not complete within {settings.migration_timeout:.0f} s"
    return ""


def _handed_over(vm: VM, migration: Migration, info: MigrationInfo) -> Step:
    """The guest runs on the target now: the VM is placed there. (This process, paused for good,
    is stopped by the next look: the VM is no longer this host's.)"""
    check_migration_step(Party.SOURCE, migration.phase, None)
    status = S.SUSPENDED if vm.requested is Requested.SUSPENDED else S.RUNNING
    # To QEMU's ms: a tiny guest moves in a few tenths of a second (tests/bench/migration.py reads this).
    took = f"downtime {info.downtime_ms} ms, {info.total_ms / 1000:.3f} s in all" if info.total_ms else "done"
    return Step(status=status, fields={**placed_on(migration.target), **_migration_ended(vm), "error": "",
                                       "disk_clients": migration.target_clients or vm.disk_clients,
                                       "guacamole": None, "nic_errors": {}},
                event=f"migrated from {migration.source} to {migration.target} ({took})", look_again=0)


def _migration_failed(vm: VM, migration: Migration, seen: Seen, why: str) -> Step:
    """Ended where it was: the guest runs on (or stays paused, if asked) here."""
    check_migration_step(Party.SOURCE, migration.phase, None)
    status = S.RUNNING if seen.run.state is RunState.RUNNING else S.SUSPENDED
    return Step(status=status, fields=_migration_ended(vm), event=f"not migrated to {migration.target}: {why}",
                look_again=0)


def _migration_ended(vm: VM) -> dict[str, Any]:
    request = vm.migration.request if vm.migration else 0
    return {"migration": None, "migrated_generation": max(vm.migrated_generation, request), "deadline": None}


def decide_incoming(vm: VM, migration: Migration, seen: Seen) -> Step:
    """The target's step for a VM migrating here (placed on the source until it arrives)."""
    state = seen.run.state
    if migration.phase is MigrationPhase.FAILED:
        if state is RunState.ABSENT:
            return Step(note="its migration here failed; waiting for the source to end it")
        return Step(Act.KILL, note="its migration here failed: stopping the copy that waited for it")
    if migration.phase is MigrationPhase.CHOSEN:
        if state is not RunState.ABSENT:  # one started before this agent recorded where it listens
            return Step(Act.KILL, note="stopping a receiving process whose address was not recorded", look_again=0)
        return Step(Act.RECEIVE, event=f"receiving it from {migration.source}")
    if state is RunState.INMIGRATE or state in LIVE:  # waiting, or arrived: the source hands it over
        return Step(note=f"receiving it from {migration.source}", look_again=1.0)
    check_migration_step(Party.TARGET, migration.phase, MigrationPhase.FAILED)
    error = f"its process here {'exited' if state is RunState.ABSENT else 'is ' + state.value}" + (
        f": {seen.run.detail}" if seen.run.detail else "")
    return Step(fields={"migration": migration.model_copy(update={"phase": MigrationPhase.FAILED, "error": error})},
                note=f"receiving failed: {error}")


NO_UNDERLAY = "this host has no VM networking (no underlay configured: UCLOUD_UNDERLAY_DEVICE, UCLOUD_UNDERLAY_ADDRESS)"


def _nics(vm: VM, seen: Seen) -> Step:
    """A running VM's NICs follow its record (attach and detach through the API), one at a time:
    one too many is unplugged first, then one missing is plugged — unless it failed for good
    (`nic_errors`): that one waits for the VM's next start."""
    wanted = {nic.mac: nic.network for nic in vm.networks}
    if not seen.networked:  # said on each NIC, not only in the host's log
        unserved = dict.fromkeys(wanted, NO_UNDERLAY)
        if vm.nic_errors != unserved:
            return Step(fields={"nic_errors": unserved}, note="this host gives no NICs", look_again=0)
        return Step()
    if seen.run.nics is None:
        return Step()
    failed = {mac: reason for mac, reason in vm.nic_errors.items() if mac in wanted}
    if failed != vm.nic_errors:
        return Step(fields={"nic_errors": failed}, note="forgot the failures of NICs detached since", look_again=0)
    for mac in sorted(seen.run.nics - wanted.keys()):
        return Step(Act.UNPLUG, event=f"NIC {mac} detached", nic=mac)
    for mac in sorted(wanted.keys() - seen.run.nics - failed.keys()):  # a failed one waits for the next start
        return Step(Act.PLUG, event=f"NIC {mac} attached (network {wanted[mac]})", nic=mac)
    return Step()


def _found_running(vm: VM, seen: Seen, wants_to_run: bool) -> Step:
    """A process runs although the record says otherwise: the host was only thought dead (KILLED),
    or the record was left ERROR by an older agent. Adopted (through STARTING), never started
    twice — unless it must not run, or cannot be this placement's: a process is started only after
    STARTING is recorded, so one alive while the record says SCHEDULED_DEPLOY (placed afresh, e.g.
    back here after a fence) or STOPPED predates the record and is never adopted."""
    if vm.status is S.KILLED and seen.fenced:
        # The scheduler fenced this host while it was thought dead: this process is cut off from
        # its disk for good. Adopting it would report RUNNING a guest that can do no I/O.
        return Step(Act.KILL, note="its process was fenced off its disk while the host was thought dead; "
                    "restarting it", look_again=0)
    if vm.status in (S.SCHEDULED_DEPLOY, S.STOPPED):
        return Step(Act.KILL, note=f"stopping a process older than its record ({vm.status}): never adopted",
                    look_again=0)
    if not wants_to_run:
        return Step(Act.KILL, S.STOPPED, _observed(vm, error=""), "stopped")
    return Step(status=S.STARTING, fields={"error": ""}, event="re-adopted its QEMU", look_again=0)


def _stopping(vm: VM, now: datetime, settings: Settings) -> Step:
    if vm.deadline is None:  # recorded STOPPING without a deadline (an older agent): press again
        return Step(Act.POWERDOWN, fields={"deadline": now + timedelta(seconds=settings.shutdown_timeout)},
                    note="pressing the power button again", look_again=settings.shutdown_timeout)
    if now < vm.deadline:
        return Step(note="waiting for the guest to power off", look_again=_seconds(vm.deadline - now))
    stopped = _stopped(vm, "stopped: hard stop after the guest ignored ACPI")
    return Step(Act.KILL, stopped.status, stopped.fields, stopped.event, look_again=stopped.look_again)


def _stopped(vm: VM, event: str) -> Step:
    """STOPPED, as asked — or not: a request to run that came while it stopped is not marked
    observed, and so is acted on next (a look again at once)."""
    if vm.requested in WANTS_TO_RUN:
        return Step(status=S.STOPPED, fields={"error": ""}, event=event, look_again=0)
    return Step(status=S.STOPPED, fields=_observed(vm, error=""), event=event)


def _start(vm: VM, restarts: int, event: str) -> Step:
    # Look again at once: the next look sees the process and records RUNNING (or SUSPENDED).
    return Step(Act.START, S.STARTING, {"restarts": restarts, "started_at": None, "deadline": None, "nic_errors": {}},
                event, look_again=0)


def _in_a_row(vm: VM, now: datetime, settings: Settings) -> int:
    """The restarts that count: none once the VM ran stably since its last start (crashes far apart
    are not a loop), whoever recorded it KILLED (its agent, or the scheduler when its host died)."""
    stable = vm.started_at is not None and (now - vm.started_at).total_seconds() >= settings.stable_after
    return 0 if stable else vm.restarts


def _crashed(vm: VM, reason: str, now: datetime, settings: Settings) -> Step:
    """KILLED with the reason, and a restart after a backoff that doubles with each crash in a row."""
    restarts = _in_a_row(vm, now, settings)
    backoff = min(settings.restart_backoff_max, 2.0 ** restarts)
    return Step(status=S.KILLED, fields={"error": reason, "restarts": restarts,
                                         "deadline": now + timedelta(seconds=backoff)},
                event=f"killed: {reason}", look_again=backoff)


def _observed(vm: VM, **fields: Any) -> dict[str, Any]:
    """`fields`, and the request the VM's generation carries marked as acted on."""
    return {"observed_generation": vm.generation, **fields}


def _differs(vm: VM, status: Status) -> bool:
    return vm.status is not status or vm.observed_generation != vm.generation


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())
