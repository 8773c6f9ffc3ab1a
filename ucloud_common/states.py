"""The dual state model as one table.

A VM carries two states. `requested` is what its owner wants (RUNNING, STOPPED, SUSPENDED, DELETED)
and only the API writes it. `status` is what is true, and only the scheduler and the host agent
write it. The seed kept both in one field, and a KILLED VM that its owner asked to suspend was left
in REQUESTED_SUSPEND: no longer KILLED, so never rescheduled; not RUNNING, so never suspended.

Here that request is checked against the actual status before anything is written:

    >>> check_action(Action.SUSPEND, Status.KILLED, Requested.RUNNING)
    Traceback (most recent call last):
    ...
    ucloud_common.states.ActionRefused: cannot suspend: the VM is KILLED (suspend is possible when it is RUNNING)

The API answers 409 with that sentence and writes nothing; `requested` stays RUNNING and the
scheduler, which (re)schedules every VM that is requested RUNNING and KILLED, restarts it.

`ACTIONS` says, for each user request, in which actual statuses it is accepted and what
`requested` becomes. `TRANSITIONS` says which `status` moves the scheduler and the agent may make;
a writer checks its move with `check_transition` before its compare-and-swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """What is true of a VM (written by the scheduler and the agent)."""

    REQUESTED_NEW = "REQUESTED_NEW"  # created, no host yet
    SCHEDULED_DEPLOY = "SCHEDULED_DEPLOY"  # a host was chosen; its agent has not started it yet
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    KILLED = "KILLED"  # its QEMU or its host died while it should run
    MIGRATING = "MIGRATING"
    DELETING = "DELETING"
    ERROR = "ERROR"  # a permanent failure; `error` says why


class Requested(StrEnum):
    """What the owner wants (written by the API only)."""

    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"


class Action(StrEnum):
    START = "start"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    SUSPEND = "suspend"
    RESUME = "resume"
    DELETE = "delete"
    MIGRATE = "migrate"
    RESIZE = "resize"


class Writer(StrEnum):
    SCHEDULER = "scheduler"
    AGENT = "agent"


S = Status


@dataclass(frozen=True)
class ActionRule:
    valid_in: frozenset[Status]
    requested: Requested | None
    """What `requested` becomes (None: it stays). Reboot keeps RUNNING and is told apart by the VM's
    `reboot_generation`; migrate keeps whatever is requested (a suspended VM moves suspended), and is
    told by `migrate_generation`: fields the API writes with the same request."""
    only_requested: Requested | None = None
    """Accepted only while `requested` is this (None: whatever it is)."""


ACTIONS: dict[Action, ActionRule] = {
    # ERROR accepts start so that an owner can retry after fixing the cause.
    Action.START: ActionRule(frozenset({S.STOPPED, S.ERROR}), Requested.RUNNING),
    # A KILLED VM may be shut down: it means "stop restarting it".
    Action.SHUTDOWN: ActionRule(frozenset({S.RUNNING, S.SUSPENDED, S.KILLED, S.ERROR}), Requested.STOPPED),
    Action.REBOOT: ActionRule(frozenset({S.RUNNING}), Requested.RUNNING),
    Action.SUSPEND: ActionRule(frozenset({S.RUNNING}), Requested.SUSPENDED),
    Action.RESUME: ActionRule(frozenset({S.SUSPENDED}), Requested.RUNNING),
    Action.DELETE: ActionRule(frozenset(Status), Requested.DELETED),
    Action.MIGRATE: ActionRule(frozenset({S.RUNNING, S.SUSPENDED}), None),
    # Only STOPPED: QEMU is started with the specs, and a disk grows only while no QEMU has it open.
    # It stays STOPPED: the scheduler checks its host's room, the agent grows the disks at the next start.
    # A STOPPED VM asked to start (requested RUNNING) may be starting this moment: not resized.
    Action.RESIZE: ActionRule(frozenset({S.STOPPED}), None, only_requested=Requested.STOPPED),
}


# Statuses in which a VM occupies a host: a dead host turns them into KILLED.
ON_HOST = frozenset({S.SCHEDULED_DEPLOY, S.STARTING, S.RUNNING, S.SUSPENDED, S.STOPPING, S.MIGRATING})

TRANSITIONS: dict[Writer, dict[Status, frozenset[Status]]] = {
    Writer.SCHEDULER: {
        S.REQUESTED_NEW: frozenset({S.SCHEDULED_DEPLOY}),
        S.KILLED: frozenset({S.SCHEDULED_DEPLOY}),
        **{status: frozenset({S.KILLED}) for status in ON_HOST},
    },
    Writer.AGENT: {
        S.SCHEDULED_DEPLOY: frozenset({S.STARTING, S.STOPPED, S.DELETING, S.ERROR}),
        # A VM requested SUSPENDED that is (re)started, or whose QEMU is re-adopted paused, goes
        # STARTING → SUSPENDED; without it such a VM stuck in STARTING for good.
        S.STARTING: frozenset({S.RUNNING, S.SUSPENDED, S.STOPPED, S.KILLED, S.DELETING, S.ERROR}),
        S.RUNNING: frozenset({S.SUSPENDED, S.STOPPING, S.STOPPED, S.KILLED, S.MIGRATING, S.DELETING, S.ERROR}),
        S.SUSPENDED: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.KILLED, S.MIGRATING, S.DELETING, S.ERROR}),
        S.STOPPING: frozenset({S.STOPPED, S.KILLED, S.DELETING, S.ERROR}),
        S.STOPPED: frozenset({S.STARTING, S.DELETING, S.ERROR}),
        S.KILLED: frozenset({S.STARTING, S.STOPPED, S.DELETING, S.ERROR}),
        # A VM may be deleted in any status, also while it migrates (found by the decision table).
        S.MIGRATING: frozenset({S.RUNNING, S.SUSPENDED, S.KILLED, S.DELETING, S.ERROR}),
        S.ERROR: frozenset({S.STARTING, S.STOPPED, S.DELETING}),
        S.DELETING: frozenset({S.ERROR}),
    },
}


class MigrationPhase(StrEnum):
    """Where a live migration is (`VM.migration.phase`); no migration record: none under way."""

    CHOSEN = "chosen"  # the scheduler chose the target host; its agent prepares a QEMU to receive the VM
    LISTENING = "listening"  # the target's QEMU waits for the guest at `address`
    RUNNING = "running"  # the source's QEMU sends the guest (the VM is MIGRATING)
    FAILED = "failed"  # the target could not receive it (`error`); the source ends the migration


class Party(StrEnum):
    SCHEDULER = "scheduler"
    SOURCE = "source agent"  # the agent of the host the VM is placed on
    TARGET = "target agent"  # the agent of the host it moves to


M = MigrationPhase
# Who may move a migration from one phase to which (None: no migration). Only the source ends one
# (to None), whatever its phase: it alone knows whether its QEMU has handed the guest over. The
# scheduler also ends one when the source's host dies (the VM is then KILLED and fenced).
MIGRATION_STEPS: dict[Party, dict[MigrationPhase | None, frozenset[MigrationPhase | None]]] = {
    Party.SCHEDULER: {None: frozenset({M.CHOSEN}), **{phase: frozenset({None}) for phase in M}},
    Party.TARGET: {M.CHOSEN: frozenset({M.LISTENING, M.FAILED}), M.LISTENING: frozenset({M.FAILED}),
                   M.RUNNING: frozenset({M.FAILED})},
    Party.SOURCE: {**{phase: frozenset({None}) for phase in M}, M.LISTENING: frozenset({M.RUNNING, None})},
}


class ActionRefused(Exception):
    """A user request that the VM's actual status does not allow; `str()` is the sentence for the user."""

    def __init__(self, action: Action, status: Status, detail: str) -> None:
        super().__init__(f"cannot {action.value}: {detail}")
        self.action = action
        self.status = status


class IllegalMigrationStep(Exception):
    def __init__(self, party: Party, old: MigrationPhase | None, new: MigrationPhase | None) -> None:
        super().__init__(f"the {party.value} may not move a migration from {old or 'none'} to {new or 'none'}")


class IllegalTransition(Exception):
    def __init__(self, writer: Writer, old: Status, new: Status) -> None:
        super().__init__(f"the {writer.value} may not move a VM from {old} to {new}")


def check_action(action: Action, status: Status, requested: Requested) -> Requested:
    """Return the `requested` state the action sets, or raise `ActionRefused` saying why not."""
    if requested is Requested.DELETED and action is not Action.DELETE:
        raise ActionRefused(action, status, "the VM is being deleted")
    rule = ACTIONS[action]
    if status not in rule.valid_in:
        possible = ", ".join(s.value for s in Status if s in rule.valid_in)
        raise ActionRefused(
            action, status, f"the VM is {status} ({action.value} is possible when it is {possible})"
        )
    if rule.only_requested is not None and requested is not rule.only_requested:
        raise ActionRefused(action, status, f"the VM is {status} but asked to be {requested} "
                            f"({action.value} is possible when it is asked to be {rule.only_requested} too)")
    return rule.requested or requested


def check_migration_step(party: Party, old: MigrationPhase | None, new: MigrationPhase | None) -> None:
    """Raise `IllegalTransition` unless `party` may move a migration from `old` to `new` (staying is allowed)."""
    if old is not new and new not in MIGRATION_STEPS[party].get(old, frozenset()):
        raise IllegalMigrationStep(party, old, new)


def check_transition(writer: Writer, old: Status, new: Status) -> None:
    """Raise `IllegalTransition` unless `writer` may move a VM from `old` to `new` (staying is allowed)."""
    if old is not new and new not in TRANSITIONS[writer].get(old, frozenset()):
        raise IllegalTransition(writer, old, new)


def render_markdown() -> str:
    """The action table as Markdown, for the README (a test keeps the README equal to it)."""
    statuses = list(Status)
    lines = [
        "| request → `requested` | " + " | ".join(s.value for s in statuses) + " |",
        "|---|" + "---|" * len(statuses),
    ]
    for action, rule in ACTIONS.items():
        cells = ["✓" if s in rule.valid_in else "409" for s in statuses]
        becomes = rule.requested.value if rule.requested else "unchanged"
        lines.append(f"| {action.value} → {becomes} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
