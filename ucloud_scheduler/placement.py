"""Choosing a host: filters (can this host take this VM?) and a weigher (which of them first?).

Filters: the host is UP, its agent is alive, it is not in maintenance, it offers the VM's storage
backend, it runs no other VM of the VM's anti-affinity group, and it has the VM's cpu, ram, ssd and
hdd free after the over-commit ratios. Weighers: `spread` takes the host with the largest free
share of its scarcest resource, `pack` the smallest that fits; ties are broken at random.

Hosts wait in a heap ordered by weight, so a placement pops the best host and usually takes it:
its cost grows with the log of the number of hosts, and not at all with the number of VMs.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Self

from ucloud_common.allocation import ZERO
from ucloud_common.host import Host, HostStatus
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_scheduler.view import View


@dataclass(frozen=True)
class Ratios:
    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0


class Refusal(str):
    """Why no host can take a VM: the sentence (it is a `str`, written as the VM's error) and a
    `kind` of a few fixed words ("no_room_ram", "storage", …) that the metrics count by."""

    kind: str

    def __new__(cls, kind: str, sentence: str) -> Self:
        refusal = super().__new__(cls, sentence)
        refusal.kind = kind
        return refusal


_DIMENSIONS = (("cpu", "CPUs", "cpu"), ("ram", "GiB RAM", "ram"), ("ssd", "GiB SSD", "disk"), ("hdd", "GiB HDD", "disk"))


def free(host: Host, allocated: Specs, ratios: Ratios) -> dict[str, float]:
    return {dim: getattr(host.capacity, dim) * getattr(ratios, ratio) - getattr(allocated, dim)
            for dim, _, ratio in _DIMENSIONS}


def fits(vm: VM, room: dict[str, float]) -> bool:
    return all(getattr(vm.specs, dim) <= room[dim] for dim, _, _ in _DIMENSIONS)


def _fmt(value: float) -> str:
    return f"{value:g}"


class Placer:
    """Places a batch of VMs on one snapshot of the view, updating its own copy of allocations as
    it goes (so one batch never overfills a host)."""

    def __init__(self, view: View, ratios: Ratios, mode: str = "spread", rng: random.Random | None = None) -> None:
        self._view = view
        self._ratios = ratios
        self._sign = -1.0 if mode == "spread" else 1.0
        self._rng = rng or random.Random()
        self.eligible: dict[str, Host] = {
            name: host.value for name, host in view.hosts.items()
            if host.value.status is HostStatus.UP and not host.value.maintenance and view.is_alive(name)
        }
        self._room = {name: free(host, view.allocated.get(name, ZERO), ratios)
                      for name, host in self.eligible.items()}
        self._heap = [(self._weight(name), self._rng.random(), name) for name in self.eligible]
        self._placed_groups: set[tuple[str, str, str]] = set()  # (owner, group, host) placed in this batch
        heapq.heapify(self._heap)
        # Upper bounds of what any host has free: a VM above one of them is refused at once.
        self._most = {dim: max((room[dim] for room in self._room.values()), default=0.0) for dim, _, _ in _DIMENSIONS}

    def _weight(self, name: str) -> float:
        host, room = self.eligible[name], self._room[name]
        shares = [room[dim] / (getattr(host.capacity, dim) * getattr(self._ratios, ratio))
                  for dim, _, ratio in _DIMENSIONS if getattr(host.capacity, dim) > 0]
        return self._sign * min(shares, default=0.0)

    def _allowed(self, vm: VM, name: str) -> bool:
        host = self.eligible[name]
        if vm.anti_affinity and (name in self._view.group_hosts(vm)
                                 or (vm.owner, vm.anti_affinity, name) in self._placed_groups):
            return False
        return vm.storage in host.storage_backends and fits(vm, self._room[name])

    def place(self, vm: VM, avoid: str = "") -> str | None:
        """The name of the host for `vm` (its room taken), or None if no host can take it; never
        `avoid` (the host a migrating VM leaves)."""
        if any(getattr(vm.specs, dim) > self._most[dim] for dim, _, _ in _DIMENSIONS):
            return None
        skipped = []
        chosen = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            if entry[2] != avoid and self._allowed(vm, entry[2]):
                chosen = entry[2]
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        if chosen is None:
            return None
        self._take(vm, chosen)
        return chosen

    def place_on(self, vm: VM, name: str) -> str | None:
        """Why `vm` cannot go to host `name`, or None once its room there is taken."""
        if name not in self._view.hosts:
            return f"no host {name}"
        if name not in self.eligible:
            return f"host {name} is not UP, not alive or in maintenance"
        if not self._allowed(vm, name):
            return f"host {name} cannot take it: {self.why_not(vm, only=name)}"
        self._take(vm, name)
        self._heap = [entry for entry in self._heap if entry[2] != name]
        heapq.heapify(self._heap)
        heapq.heappush(self._heap, (self._weight(name), self._rng.random(), name))
        return None

    def _take(self, vm: VM, chosen: str) -> None:
        if vm.anti_affinity:
            self._placed_groups.add((vm.owner, vm.anti_affinity, chosen))
        room = self._room[chosen]
        for dim, _, _ in _DIMENSIONS:
            room[dim] -= getattr(vm.specs, dim)
        heapq.heappush(self._heap, (self._weight(chosen), self._rng.random(), chosen))

    def why_not(self, vm: VM, avoid: str = "", only: str = "") -> Refusal:
        """One sentence on why no host (but `avoid`; or host `only`) can take `vm`, naming the best there is."""
        if not self._view.hosts:
            return Refusal("no_host", "no host is registered")
        eligible = {n: h for n, h in self.eligible.items() if n != avoid and (not only or n == only)}
        if not eligible:
            down = sum(1 for h in self._view.hosts if not self._view.is_alive(h))
            other = " other" if avoid else ""
            return Refusal("no_host_up", f"no{other} host is UP and out of maintenance ({len(self._view.hosts)} hosts, "
                           f"{down} not alive)")
        candidates = [n for n, h in eligible.items() if vm.storage in h.storage_backends]
        if not candidates:
            return Refusal("storage", f"no UP host offers storage {vm.storage}")
        free_of_group = [n for n in candidates if n not in self._view.group_hosts(vm)
                         and (vm.owner, vm.anti_affinity, n) not in self._placed_groups]
        if not free_of_group:
            return Refusal("anti_affinity", f"every UP host already runs a VM of anti-affinity group {vm.anti_affinity}")
        for dim, unit, _ in _DIMENSIONS:
            need = getattr(vm.specs, dim)
            best = max(free_of_group, key=lambda n: self._room[n][dim])
            if need > self._room[best][dim]:
                return Refusal(f"no_room_{dim}", f"no host has {_fmt(need)} {unit} free; the most free is "
                               f"{_fmt(max(self._room[best][dim], 0))} {unit} on {best}")
        return Refusal("no_room", f"no host has {vm.specs.cpu} CPUs, {_fmt(vm.specs.ram)} GiB RAM, {vm.specs.ssd} GiB SSD and "
                       f"{vm.specs.hdd} GiB HDD free at once")
