"""The scheduler's in-memory view of hosts, liveness and VMs, fed by watches.

Allocations and the set of VMs waiting for a host are kept up to date change by change, so a
placement never reads all hosts or all VMs from etcd, and its cost does not grow with the number
of VMs. The hosts a VM may go to wait in a `HostIndex`, re-weighed one host at a time as its record,
liveness or allocations change, so a placement costs O(log hosts) rather than a weighing of all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ucloud_common.allocation import ZERO, add
from ucloud_common.host import Host, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.states import Requested, Status
from ucloud_common.store import Change, Snapshot, Versioned
from ucloud_common.vm import VM
from ucloud_scheduler.hostindex import HostIndex, Ratios

# What a VM that waits for a host wants: to run (a suspended one is resumed where it lands).
WANTS_TO_RUN = frozenset({Requested.RUNNING, Requested.SUSPENDED})
WAITS_FOR_HOST = frozenset({Status.REQUESTED_NEW, Status.KILLED})
MOVABLE = frozenset({Status.RUNNING, Status.SUSPENDED})  # what live migration moves


def needs_host(vm: VM) -> bool:
    return not vm.host and vm.status in WAITS_FOR_HOST and vm.requested in WANTS_TO_RUN


def needs_resize(vm: VM) -> bool:
    """A resize was asked (of a STOPPED VM): the scheduler checks its host's room."""
    return vm.resize is not None and vm.requested is not Requested.DELETED


def needs_target(vm: VM) -> bool:
    """Asked to move, and in a state to: the scheduler chooses where to."""
    return vm.wants_migration() and bool(vm.host) and vm.status in MOVABLE


@dataclass
class View:
    hosts: dict[str, Versioned[Host]] = field(default_factory=dict)  # by host name
    alive: set[str] = field(default_factory=set)  # host names whose agent holds its lease
    alive_revision: int = 0  # how far the liveness stream has been seen (see `known_dead`)
    vms: dict[str, Versioned[VM]] = field(default_factory=dict)  # by uuid
    allocated: dict[str, Specs] = field(default_factory=dict)  # by host name
    pending: dict[str, None] = field(default_factory=dict)  # uuids waiting for a host, oldest first
    groups: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # (owner, group) → host name → VMs
    by_host: dict[str, set[str]] = field(default_factory=dict)  # host name → uuids
    to_move: dict[str, None] = field(default_factory=dict)  # uuids waiting for a migration target, oldest first
    migrating: dict[str, tuple[str, str]] = field(default_factory=dict)  # uuid → (source, target) under way
    to_resize: dict[str, None] = field(default_factory=dict)  # uuids whose resize waits for a check, oldest first
    # Hosts a cycle must look at beyond placing: not alive, fenced, or draining (kept change by
    # change, so a cycle does not go through every host).
    unsettled: set[str] = field(default_factory=set)
    # Built by the first placement after a snapshot (or a change of ratios, mode or rng), then kept
    # up to date change by change.
    _index: HostIndex | None = field(default=None, repr=False, compare=False)
    # Hosts whose allocations changed in the VM change being taken in: re-weighed once at its end
    # (a VM rewritten in place takes its room off and on again).
    _reallocated: set[str] = field(default_factory=set, repr=False, compare=False)

    # -- feeding ----------------------------------------------------------------------------------

    def apply_hosts(self, item: Snapshot[Host] | Change[Host]) -> None:
        if isinstance(item, Snapshot):
            self.hosts = dict(item.items)
            self._index = None
            self.unsettled = {name for name in self.hosts if self._is_unsettled(name)}
            return
        if item.value is None:
            self.hosts.pop(item.name, None)
        else:
            self.hosts[item.name] = item.value
        self._refresh(item.name)
        self._settle(item.name)

    def apply_alive(self, item: Snapshot[HostAlive] | Change[HostAlive]) -> None:
        self.alive_revision = max(self.alive_revision, item.revision)
        if isinstance(item, Snapshot):
            self.alive = set(item.items)
            self._index = None
            self.unsettled = {name for name in self.hosts if self._is_unsettled(name)}
            return
        if item.value is None:
            self.alive.discard(item.name)
        else:
            self.alive.add(item.name)
        self._refresh(item.name)
        self._settle(item.name)

    def apply_vms(self, item: Snapshot[VM] | Change[VM]) -> None:
        if isinstance(item, Snapshot):
            self._index = None  # rebuilt once, not re-weighed VM by VM
            for uuid in list(self.vms):
                self._forget(uuid)
            for uuid, vm in item.items.items():
                self.set_vm(vm)
        elif item.value is None:
            self._forget(item.name)
        else:
            known = self.vms.get(item.name)
            # A watch event older than what this scheduler itself wrote changes nothing.
            if known is None or item.value.mod_revision >= known.mod_revision:
                self.set_vm(item.value)

    def set_vm(self, vm: Versioned[VM]) -> None:
        self._unset(vm.name)
        self.vms[vm.name] = vm
        value = vm.value
        if value.host:
            self._allocate(value.host, value.specs, 1)
            self.by_host.setdefault(value.host, set()).add(vm.name)
            if value.anti_affinity:
                members = self.groups.setdefault((value.owner, value.anti_affinity), {})
                members[value.host] = members.get(value.host, 0) + 1
        if needs_host(value):
            self.pending[vm.name] = None
        if needs_target(value):
            self.to_move[vm.name] = None
        if needs_resize(value):
            self.to_resize[vm.name] = None
        if value.migration is not None:
            # A VM being moved holds room on both hosts until it is on one of them.
            target = value.migration.target
            self._allocate(target, value.specs, 1)
            self.migrating[vm.name] = (value.migration.source, target)
        self._refresh_reallocated()

    def _forget(self, uuid: str) -> None:
        self._unset(uuid)
        self._refresh_reallocated()

    def _unset(self, uuid: str) -> None:
        old = self.vms.pop(uuid, None)
        self.pending.pop(uuid, None)
        self.to_move.pop(uuid, None)
        self.to_resize.pop(uuid, None)
        if self.migrating.pop(uuid, None) is not None and old is not None and old.value.migration is not None:
            self._allocate(old.value.migration.target, old.value.specs, -1)
        if old is None or not old.value.host:
            return
        value = old.value
        self._allocate(value.host, value.specs, -1)
        self.by_host.get(value.host, set()).discard(uuid)
        if value.anti_affinity:
            members = self.groups.get((value.owner, value.anti_affinity), {})
            members[value.host] = members.get(value.host, 1) - 1
            if members.get(value.host) == 0:
                del members[value.host]

    def _allocate(self, host_name: str, specs: Specs, times: int) -> None:
        self.allocated[host_name] = add(self.allocated.get(host_name, ZERO), specs, times)
        self._reallocated.add(host_name)

    def _refresh_reallocated(self) -> None:
        for host_name in self._reallocated:
            self._refresh(host_name)
        self._reallocated.clear()

    def _refresh(self, host_name: str) -> None:
        if self._index is not None:
            host = self.hosts.get(host_name)
            self._index.update(host_name, host.value if host else None, host_name in self.alive,
                               self.allocated.get(host_name, ZERO))

    def _is_unsettled(self, name: str) -> bool:
        host = self.hosts.get(name)
        return host is not None and (name not in self.alive or host.value.fenced
                                     or (host.value.maintenance and host.value.drain))

    def _settle(self, name: str) -> None:
        if self._is_unsettled(name):
            self.unsettled.add(name)
        else:
            self.unsettled.discard(name)

    def host_index(self, ratios: Ratios, sign: float, rng: random.Random) -> HostIndex:
        """The eligible hosts by weight for these ratios and mode (`sign`), ties broken with `rng`;
        built from all hosts only when asked first, or for other ratios, mode or rng."""
        index = self._index
        if index is None or index.ratios != ratios or index.sign != sign or index.rng is not rng:
            index = self._index = HostIndex(ratios, sign, rng)
            for name, host in self.hosts.items():
                index.update(name, host.value, name in self.alive, self.allocated.get(name, ZERO))
        return index

    # -- questions --------------------------------------------------------------------------------

    def is_alive(self, name: str) -> bool:
        return name in self.alive

    def known_dead(self, host: Versioned[Host]) -> bool:
        """Not alive, and known not to be: the liveness stream has been seen past the revision of
        the host's record. (An agent writes its liveness key before its record, but the two arrive
        on different watches: without this, a host could be declared DOWN the moment it registers.)"""
        return host.name not in self.alive and self.alive_revision >= host.mod_revision

    def vms_on(self, host_name: str) -> list[Versioned[VM]]:
        return [self.vms[u] for u in self.by_host.get(host_name, ()) if u in self.vms]

    def group_hosts(self, vm: VM) -> dict[str, int]:
        return self.groups.get((vm.owner, vm.anti_affinity), {}) if vm.anti_affinity else {}
