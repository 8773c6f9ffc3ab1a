"""One scheduler cycle's decisions, made purely: `plan_cycle` reads the view and what the scheduler
knows of its fences, and returns a frozen `Plan`; `Scheduler.apply` carries it out.

Nothing here writes, reads a clock or talks to etcd, so every decision can be tested on a hand-built
view. A plan is made on one snapshot: a VM it changes is changed once, compared with the revision
seen (a VM that moved on meanwhile is left to the next cycle).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ucloud_common.allocation import SHARED_STORAGE, resize_delta
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS, Host, HostStatus
from ucloud_common.specs import Specs, described
from ucloud_common.states import (ON_HOST, MigrationPhase, Party, Status, Writer, check_migration_step,
                                  check_transition)
from ucloud_common.store import Versioned
from ucloud_common.vm import VM, Migration, placed_on
from ucloud_scheduler.placement import Placer, Ratios
from ucloud_scheduler.view import MOVABLE, WANTS_TO_RUN, View


@dataclass(frozen=True)
class Fencing:
    """What the scheduler knows of fencing one host, for one outage (the host's `down_since` then).

    Everything here holds for `outage` only: a fence of an earlier outage says nothing about the VMs
    the host ran since, so a plan reads a `Fencing` of another outage as none at all."""

    outage: datetime | None
    fenced: frozenset[str] = frozenset()  # uuids that fences of this outage cut off (taken in)
    failed_at: float | None = None  # clock.monotonic() when the last fence of this outage failed
    running: bool = False  # a fence was started and has not finished
    result: frozenset[str] | None = None  # a finished fence not taken in yet: the uuids it fenced
    error: str = ""  # or why that fence failed


@dataclass(frozen=True)
class VMWrite:
    """Fields to change on a VM (for `VM.evolve`), decided on the revision `seen`; `message` goes to
    its event log. (Fields, not a new record: `evolve` stamps `updated_at` from the clock.)"""

    seen: Versioned[VM]
    changes: Mapping[str, Any]
    message: str

    @property
    def changes_anything(self) -> bool:
        return any(getattr(self.seen.value, name) != value for name, value in self.changes.items())


def _write(vm: Versioned[VM], message: str, **changes: Any) -> VMWrite:
    return VMWrite(vm, MappingProxyType(changes), message)


@dataclass(frozen=True)
class FenceStart:
    host: Host
    uuids: tuple[str, ...]  # the VMs to fence it for (re-read from etcd right before fencing)


@dataclass(frozen=True)
class FenceDone:
    """A fence of `outage` succeeded: the host is to be marked fenced, `uuids` remembered."""

    host: str
    outage: datetime | None
    uuids: frozenset[str]


@dataclass(frozen=True)
class FenceFailure:
    """A fence of `outage` failed at `at` (clock.monotonic()); the next waits `fence_retry`."""

    host: str
    outage: datetime | None
    reason: str
    at: float


@dataclass(frozen=True)
class Plan:
    """What one cycle decided, in the order `Scheduler.apply` carries it out."""

    down: tuple[str, ...] = ()  # hosts to declare DOWN: their lease expired
    killed: tuple[VMWrite, ...] = ()
    fenced: tuple[FenceDone, ...] = ()
    released: tuple[VMWrite, ...] = ()  # fenced VMs let go of their dead host, to be placed elsewhere
    fence_failures: tuple[FenceFailure, ...] = ()
    noted: tuple[VMWrite, ...] = ()  # a fence failure told on the VMs that wait for it (when new)
    forgotten: tuple[str, ...] = ()  # hosts back alive: their fencing bookkeeping is dropped
    unfenced: tuple[str, ...] = ()  # hosts whose `fenced` flag is cleared
    resized: tuple[VMWrite, ...] = ()  # resizes its host has room for: the new specs written
    not_resized: tuple[VMWrite, ...] = ()  # resizes refused: the reason as error
    placed: tuple[VMWrite, ...] = ()
    refused: tuple[VMWrite, ...] = ()  # VMs no host can take, the reason as error (written when new)
    moves: tuple[VMWrite, ...] = ()  # migrations started (a target chosen), and stopped VMs placed elsewhere
    unmovable: tuple[VMWrite, ...] = ()  # migrate requests no host can serve: ended, the reason told
    blocked: tuple[tuple[str, Mapping[str, str]], ...] = ()  # draining hosts: the VMs that cannot leave, and why
    fences: tuple[FenceStart, ...] = ()  # fences to start

    def sentence(self) -> str:
        """What was decided, in one line ("" for nothing)."""
        parts = [f"hosts DOWN: {', '.join(self.down)}"] if self.down else []
        parts += _count(self.killed, "killed")
        parts += [f"host {done.host} fenced ({len(done.uuids)} VMs)" for done in self.fenced]
        parts += _count(self.released, "released to other hosts after fencing")
        parts += [f"fencing host {failure.host} failed: {failure.reason}" for failure in self.fence_failures]
        parts += [f"host {name} is back: its fencing forgotten" for name in self.forgotten]
        parts += [f"host {name} no longer fenced" for name in self.unfenced]
        parts += _count(self.resized, "resized")
        parts += _count(self.not_resized, "not resized")
        parts += _count(self.placed, "placed")
        parts += _count(self.refused, "unplaceable")
        parts += _count(self.moves, "to migrate")
        parts += _count(self.unmovable, "not migrated")
        parts += [f"host {name}: {len(why)} VMs cannot leave" for name, why in self.blocked if why]
        parts += [f"fencing host {start.host.name} for {len(start.uuids)} VMs" for start in self.fences]
        return "; ".join(parts)


def _count(writes: tuple[VMWrite, ...], what: str) -> list[str]:
    return [f"{len(writes)} VMs {what}"] if writes else []


def plan_cycle(view: View, fencing: Mapping[str, Fencing], settings: Settings, now: float,
               rng: random.Random) -> Plan:
    """Decide one cycle on `view` and `fencing` (per host name) at `now` (clock.monotonic()).

    A host UP whose lease is known expired is declared DOWN and its VMs killed. A host DOWN and not
    alive gets its VMs killed again, its finished fence taken in, its fenced VMs released and a fence
    started for those that still wait. A host alive again has its fencing forgotten, and its
    `fenced` flag cleared once no fenced VM waits on it. Then every VM waiting for a host is placed,
    or refused with the reason. Consumes `rng` (placement ties); changes nothing else."""
    plan = _Builder()
    # Only these hosts can need anything but placement: a host alive, unfenced and out of a drain
    # has nothing to decide on (and a cycle costs nothing per host).
    looked_at = sorted(name for name in view.unsettled | fencing.keys() if name in view.hosts)
    for name in looked_at:
        host = view.hosts[name]
        alive = view.is_alive(name)
        if host.value.status is HostStatus.UP and view.known_dead(host):
            plan.down.append(name)
            plan.killed += _kills(view, name)
        elif host.value.status is HostStatus.DOWN and not alive:
            # Again every cycle: a VM whose KILLED write was lost (an outage, a lost race) when
            # the host was declared DOWN would otherwise stay RUNNING on a dead host for good.
            kills = _kills(view, name)
            plan.killed += kills
            _fence_and_release(plan, view, host.value, fencing.get(name), kills, settings, now)
        elif alive:
            if name in fencing:
                plan.forgotten.append(name)  # this outage is over: the next one is fenced anew
            if host.value.status is HostStatus.UP and host.value.fenced and not _fenced_left(view, name):
                # It returned, and its agent has restarted (never re-adopted) the fenced VMs
                # that stayed with it: their old QEMUs were cut off from their disks.
                plan.unfenced.append(name)
    draining = [view.hosts[name].value for name in looked_at
                if view.hosts[name].value.maintenance and view.hosts[name].value.drain]
    placer = _place(plan, view, settings, rng, bool(draining))
    if placer is not None:
        _move(plan, view, settings, placer, draining)
    return plan.freeze()


@dataclass
class _Builder:
    """The plan being made: lists while deciding, tuples once frozen."""

    down: list[str] = field(default_factory=list)
    killed: list[VMWrite] = field(default_factory=list)
    fenced: list[FenceDone] = field(default_factory=list)
    released: list[VMWrite] = field(default_factory=list)
    fence_failures: list[FenceFailure] = field(default_factory=list)
    noted: list[VMWrite] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    unfenced: list[str] = field(default_factory=list)
    resized: list[VMWrite] = field(default_factory=list)
    not_resized: list[VMWrite] = field(default_factory=list)
    placed: list[VMWrite] = field(default_factory=list)
    refused: list[VMWrite] = field(default_factory=list)
    moves: list[VMWrite] = field(default_factory=list)
    unmovable: list[VMWrite] = field(default_factory=list)
    blocked: list[tuple[str, Mapping[str, str]]] = field(default_factory=list)
    fences: list[FenceStart] = field(default_factory=list)

    def freeze(self) -> Plan:
        return Plan(**{name: tuple(values) for name, values in vars(self).items()})


def _kills(view: View, name: str) -> list[VMWrite]:
    return [_killed(vm, name) for vm in view.vms_on(name) if vm.value.status in ON_HOST]


def _killed(vm: Versioned[VM], host: str) -> VMWrite:
    check_transition(Writer.SCHEDULER, vm.value.status, Status.KILLED)
    if vm.value.storage in SHARED_STORAGE:
        why = f"host {host} died; restarting it elsewhere once the host is fenced"
    else:
        why = f"host {host} died; its disk is local to that host: it restarts when the host returns"
    migration = vm.value.migration
    if migration is None:
        return _write(vm, f"killed: host {host} died", status=Status.KILLED, error=why)
    # Its migration ends with it: the target's QEMU may have taken the guest over already, so the
    # fence cuts it off too (and its agent stops it, the VM no longer moving there).
    check_migration_step(Party.SCHEDULER, migration.phase, None)
    clients = tuple(dict.fromkeys((*vm.value.disk_clients, *migration.target_clients)))
    return _write(vm, f"killed: host {host} died while the VM migrated to {migration.target}", status=Status.KILLED,
                  error=why, migration=None, disk_clients=clients,
                  migrated_generation=max(vm.value.migrated_generation, migration.request))


def _cut_off_by_fence(vm: VM) -> bool:
    """KILLED with its disk on shared storage: only a fence of its host lets it run elsewhere, and a
    fence may have cut its old QEMU off."""
    return vm.status is Status.KILLED and vm.storage in SHARED_STORAGE


def _may_move(vm: VM) -> bool:
    """Its disk is shared and it wants to run: it may run elsewhere once its dead host is fenced."""
    return vm.storage in SHARED_STORAGE and vm.requested in WANTS_TO_RUN


def _fenced_left(view: View, name: str) -> bool:
    """Whether VMs that a fence may have cut off still wait on the host as KILLED."""
    return any(_cut_off_by_fence(vm.value) for vm in view.vms_on(name))


def _fence_and_release(plan: _Builder, view: View, host: Host, known: Fencing | None, kills: list[VMWrite],
                       settings: Settings, now: float) -> None:
    """Take in the host's finished fence, let its shared-storage VMs that want to run go elsewhere —
    each only once a fence of this outage (the host's `down_since`) has cut it off — and start a
    fence for the others, at most one at a time, and not within `fence_retry` of a failed one."""
    name, outage = host.name, host.down_since
    book = known if known is not None and known.outage == outage else Fencing(outage)
    fenced, failed_at = book.fenced, book.failed_at
    if book.result is not None:
        plan.fenced.append(FenceDone(name, outage, book.result))
        fenced |= book.result
    elif book.error:
        plan.fence_failures.append(FenceFailure(name, outage, book.error, now))
        failed_at = now
        error = f"host {name} died and could not be fenced ({book.error}); waits for the host or for fencing"
        # Only the VMs already KILLED in the view: one killed by this plan is written once, by its kill.
        plan.noted += [_write(vm, f"host {name} not fenced: {book.error}", error=error)
                       for vm in view.vms_on(name) if _cut_off_by_fence(vm.value)]
    waiting = [vm for vm in view.vms_on(name) if _cut_off_by_fence(vm.value) and _may_move(vm.value)]
    plan.released += [_write(vm, f"host {name} is fenced: to be placed elsewhere", **placed_on(""), error="")
                      for vm in waiting if vm.name in fenced]
    # The VMs this plan kills wait as well: apply starts fences after writing the kills.
    unfenced = [vm.name for vm in [*waiting, *(kill.seen for kill in kills)]
                if _may_move(vm.value) and vm.name not in fenced]
    retry_due = failed_at is None or now - failed_at >= settings.fence_retry
    if unfenced and not book.running and retry_due:
        plan.fences.append(FenceStart(host, tuple(unfenced)))


def _placed(vm: Versioned[VM], host: str) -> VMWrite:
    check_transition(Writer.SCHEDULER, vm.value.status, Status.SCHEDULED_DEPLOY)
    return _write(vm, f"placed on {host}", status=Status.SCHEDULED_DEPLOY, **placed_on(host), error="")


def _place(plan: _Builder, view: View, settings: Settings, rng: random.Random, draining: bool) -> Placer | None:
    """Check the resizes asked, then place the VMs that wait for a host; the placer (with their room
    taken), if one is needed. Resizes first: their owners wait for an answer, and a new VM may go elsewhere."""
    if not view.pending and not view.to_move and not draining and not view.to_resize:
        return None
    ratios = Ratios(settings.cpu_allocation_ratio, settings.ram_allocation_ratio, settings.disk_allocation_ratio)
    placer = Placer(view, ratios, settings.placement, rng)
    for uuid in view.to_resize:
        vm = view.vms[uuid]
        if vm.value.resize is not None:
            _resize(plan, vm, vm.value.resize, placer)
    for uuid in view.pending:
        vm = view.vms[uuid]
        host = placer.place(vm.value)
        if host is not None:
            plan.placed.append(_placed(vm, host))
            continue
        reason = placer.why_not(vm.value)
        plan.refused.append(_write(vm, f"unschedulable: {reason}", error=reason))
    return placer


RESIZE_REFUSED = "resize refused: "  # how a refused resize's error begins


def refused_resize(vm: Versioned[VM], why: str) -> VMWrite:
    return _write(vm, f"not resized: {why}", resize=None, error=RESIZE_REFUSED + why)


def _resize(plan: _Builder, vm: Versioned[VM], asked: Specs, placer: Placer) -> None:
    """The asked specs written if the VM's host has room for them (a VM on no host has nothing to
    check), else the reason; the VM stays where it is either way."""
    why = placer.grow(vm.value, resize_delta(vm.value)) if vm.value.host else None
    if why is None:
        # An earlier refusal no longer holds; any other error (why it stopped) is not the resize's to clear.
        error = "" if vm.value.error.startswith(RESIZE_REFUSED) else vm.value.error
        plan.resized.append(_write(vm, f"resized to {described(asked)}", specs=asked, resize=None, error=error))
    else:
        plan.not_resized.append(refused_resize(vm, why))


def _move(plan: _Builder, view: View, settings: Settings, placer: Placer, draining: list[Host]) -> None:
    """Choose a target for each VM asked to move, then for each VM of a draining host — as placement
    would, never its own host — at most `migrations_per_host` leaving one host and
    `migrations_per_cluster` in all at once (the others wait their turn). A request no host can serve
    ends, its reason told; a draining host's VM that cannot leave is listed on the host with why."""
    turns = _Turns(settings, view)
    for uuid in view.to_move:
        vm = view.vms[uuid]
        source = vm.value.host
        if not turns.free(source):
            continue
        if vm.value.migrate_to == "*":
            target = placer.place(vm.value, avoid=source)
            why = "" if target else placer.why_not(vm.value, avoid=source)
        else:
            target = HOSTS.name_of(vm.value.migrate_to)
            why = placer.place_on(vm.value, target) or ""
        if why or target is None:
            plan.unmovable.append(_write(vm, f"not migrated: {why}", migrated_generation=vm.value.migrate_generation))
            continue
        plan.moves.append(_migrate(vm, target, vm.value.migrate_generation))
        turns.take(source)
    for host in draining:
        blocked = {}
        for vm in sorted(view.vms_on(host.name), key=lambda v: v.name):
            why = _drain_one(plan, vm, placer, turns)
            if why:
                blocked[vm.name] = why
        if blocked != host.drain_blocked:
            plan.blocked.append((host.name, MappingProxyType(blocked)))


def _drain_one(plan: _Builder, vm: Versioned[VM], placer: Placer, turns: _Turns) -> str:
    """Move one VM of a draining host if it may go now; why it cannot leave at all, if so."""
    value, source = vm.value, vm.value.host
    if value.migration is not None or value.wants_migration() or value.status in _IN_PASSING:
        return ""  # on its way, or about to be in a state that says
    if value.storage not in SHARED_STORAGE:
        return f"its disk is on {value.storage} storage, which only this host reaches"
    if value.status not in MOVABLE and value.status is not Status.STOPPED:
        return f"it is {value.status}" + (f": {value.error}" if value.error else "")
    if value.status is not Status.STOPPED and not turns.free(source):
        return ""
    target = placer.place(value, avoid=source)
    if target is None:
        return f"no other host can take it: {placer.why_not(value, avoid=source)}"
    if value.status is Status.STOPPED:  # nothing runs: it is simply placed elsewhere
        plan.moves.append(_write(vm, f"placed on {target} while stopped (host {source} drains)", **placed_on(target)))
    else:
        plan.moves.append(_migrate(vm, target, 0))
        turns.take(source)
    return ""


# Statuses a VM leaves by itself soon: a draining host waits for them rather than list them.
_IN_PASSING = frozenset({Status.SCHEDULED_DEPLOY, Status.STARTING, Status.STOPPING, Status.MIGRATING, Status.DELETING})


def _migrate(vm: Versioned[VM], target: str, request: int) -> VMWrite:
    check_migration_step(Party.SCHEDULER, None, MigrationPhase.CHOSEN)
    migration = Migration(source=vm.value.host, target=target, request=request)
    return _write(vm, f"migrating to {target}", migration=migration)


class _Turns:
    """Migrations under way, per source host and in all, against their limits."""

    def __init__(self, settings: Settings, view: View) -> None:
        self._settings = settings
        self.leaving: dict[str, int] = {}
        for source, _ in view.migrating.values():
            self.leaving[source] = self.leaving.get(source, 0) + 1
        self.under_way = len(view.migrating)

    def free(self, source: str) -> bool:
        return (self.under_way < self._settings.migrations_per_cluster
                and self.leaving.get(source, 0) < self._settings.migrations_per_host)

    def take(self, source: str) -> None:
        self.leaving[source] = self.leaving.get(source, 0) + 1
        self.under_way += 1
