"""Choosing a host: filters (can this host take this VM?) and a weigher (which of them first?).

Filters: the host is UP, its agent is alive, it is not in maintenance, it offers the VM's storage
backend (and, for a VM with an HDD disk, HDD disks on that backend), it holds a local-disk VM's
image or can fetch it from a live host that serves it, it runs no other VM of the VM's
anti-affinity group, and it has the VM's cpu, ram, ssd and hdd free after the over-commit ratios. Weighers: `spread` takes the host with the largest free
share of its scarcest resource, `pack` the smallest that fits; ties are broken at random.

Hosts wait in the view's `HostIndex`, a heap ordered by weight and kept up to date as the view
changes, so a placement pops the best host and usually takes it: its cost grows with the log of the
number of hosts, and not at all with the number of VMs.
"""

from __future__ import annotations

import heapq
import random
from typing import Self

from ucloud_common.allocation import SHARED_STORAGE
from ucloud_common.host import Host
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_scheduler.hostindex import DIMENSIONS, Entry, Ratios, weight
from ucloud_scheduler.view import View

__all__ = ["Placer", "Ratios", "Refusal", "fits"]


class Refusal(str):
    """Why no host can take a VM: the sentence (it is a `str`, written as the VM's error) and a
    `kind` of a few fixed words ("no_room_ram", "storage", …) that the metrics count by."""

    kind: str

    def __new__(cls, kind: str, sentence: str) -> Self:
        refusal = super().__new__(cls, sentence)
        refusal.kind = kind
        return refusal


def fits(vm: VM, room: dict[str, float]) -> bool:
    return all(getattr(vm.specs, dim) <= room[dim] for dim, _, _ in DIMENSIONS)


def _offers_storage(host: Host, vm: VM) -> bool:
    return vm.storage in host.storage_backends and (not vm.specs.hdd or vm.storage in host.hdd_backends)


def _fmt(value: float) -> str:
    return f"{value:g}"


class Placer:
    """Places a batch of VMs on one state of the view, taking their room as it goes (so one batch
    never overfills a host) without changing the view: the hosts it took room on are weighed again
    in a heap of its own, and their entries in the view's index are passed over."""

    def __init__(self, view: View, ratios: Ratios, mode: str = "spread", rng: random.Random | None = None) -> None:
        self._view = view
        self._ratios = ratios
        self._sign = -1.0 if mode == "spread" else 1.0
        self._rng = rng or random.Random()
        self._index = view.host_index(ratios, self._sign, self._rng)
        self._index.take_back()
        self.eligible: dict[str, Host] = self._index.hosts
        self._taken: dict[str, Entry] = {}  # hosts this batch took room on: their entry now
        self._heap: list[Entry] = []  # those entries (and stale ones), by weight
        self._placed_groups: set[tuple[str, str, str]] = set()  # (owner, group, host) placed in this batch
        self._sources: dict[str, frozenset[str]] = {}  # image → the live hosts serving it, for this batch
        # Upper bounds of what any host has free: a VM above one of them is refused at once.
        self._most = {dim: self._index.most(dim) for dim, _, _ in DIMENSIONS}

    def _room(self, name: str) -> dict[str, float]:
        entry = self._taken.get(name) or self._index.entries[name]
        return entry.room

    def _allowed(self, vm: VM, name: str) -> bool:
        host = self.eligible[name]
        if vm.anti_affinity and (name in self._view.group_hosts(vm)
                                 or (vm.owner, vm.anti_affinity, name) in self._placed_groups):
            return False
        return _offers_storage(host, vm) and self._image_reachable(vm, name) and fits(vm, self._room(name))

    def _image_reachable(self, vm: VM, name: str) -> bool:
        """A local disk is an overlay on the image's file in the host's own store: the host holds
        the image, or fetches it from another live host that serves it (both with an image server)."""
        host = self.eligible[name]
        if vm.storage in SHARED_STORAGE or host.holds(vm.image):
            return True
        return bool(host.image_url) and bool(self._serving(vm.image) - {name})

    def _serving(self, image: str) -> frozenset[str]:
        """The live hosts that hold `image` and serve it: looked up once per image and batch (it
        costs a pass over every host, and only VMs on local disks whose host lacks the image ask)."""
        found = self._sources.get(image)
        if found is None:
            found = self._sources[image] = frozenset(
                name for name, host in self._view.hosts.items()
                if host.value.image_url and host.value.images is not None and image in host.value.images
                and self._view.is_alive(name))
        return found

    def _next(self, borrowed: list[Entry]) -> Entry | None:
        """Pop the best host's entry, from the index (kept in `borrowed`, to be put back) or from
        this batch's heap; None once every host was popped. The index's entries of hosts this batch
        took room on are lent out until the next batch: popping them again for each VM of a large
        batch would cost O(VMs²)."""
        index, taken = self._index, self._taken
        while self._heap and taken.get(self._heap[0].name) is not self._heap[0]:
            heapq.heappop(self._heap)
        while index.heap and not index.current(index.heap[0]):
            heapq.heappop(index.heap)  # stale for good
        while index.heap and index.heap[0].name in taken:
            index.lent.append(heapq.heappop(index.heap))  # current, but this batch knows better
            while index.heap and not index.current(index.heap[0]):
                heapq.heappop(index.heap)
        if index.heap and (not self._heap or index.heap[0] < self._heap[0]):
            entry = heapq.heappop(index.heap)
            borrowed.append(entry)
            return entry
        return heapq.heappop(self._heap) if self._heap else None

    def place(self, vm: VM, avoid: str = "") -> str | None:
        """The name of the host for `vm` (its room taken), or None if no host can take it; never
        `avoid` (the host a migrating VM leaves)."""
        if any(getattr(vm.specs, dim) > self._most[dim] for dim, _, _ in DIMENSIONS):
            return None
        borrowed: list[Entry] = []
        skipped: list[Entry] = []
        chosen = None
        while (entry := self._next(borrowed)) is not None:
            if entry.name != avoid and self._allowed(vm, entry.name):
                chosen = entry.name
                break
            if entry.name in self._taken:
                skipped.append(entry)
        for entry in borrowed:
            heapq.heappush(self._index.heap, entry)
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
        return None

    def grow(self, vm: VM, delta: Specs) -> str | None:
        """Why `vm` (placed, with a resize asked) cannot take `delta` more (`allocation.resize_delta`) on
        its host, or None once that room there is taken. It stays on its host either way: a local disk
        cannot leave it, and a refusal tells the owner what would fit."""
        name = vm.host
        if name not in self.eligible:
            return f"its host {name} is not UP, not alive or in maintenance; ask again once it is"
        if vm.resize is not None and vm.resize.hdd and vm.storage not in self.eligible[name].hdd_backends:
            return f"its host {name} makes no HDD disks on storage {vm.storage}"
        room = self._room(name)
        for dim, unit, _ in DIMENSIONS:
            if getattr(delta, dim) > room[dim]:
                return (f"its host {name} has {_fmt(max(room[dim], 0))} {unit} free, the resize needs "
                        f"{_fmt(getattr(delta, dim))} {unit} more")
        self._take_room(name, delta)
        return None

    def _take(self, vm: VM, chosen: str) -> None:
        if vm.anti_affinity:
            self._placed_groups.add((vm.owner, vm.anti_affinity, chosen))
        self._take_room(chosen, vm.specs)

    def _take_room(self, chosen: str, specs: Specs) -> None:
        room = dict(self._room(chosen))
        for dim, _, _ in DIMENSIONS:
            room[dim] -= getattr(specs, dim)
        entry = Entry(weight(self.eligible[chosen], room, self._ratios, self._sign), self._rng.random(), chosen, room)
        self._taken[chosen] = entry
        heapq.heappush(self._heap, entry)

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
        candidates = [n for n, h in eligible.items() if _offers_storage(h, vm)]
        if not candidates:
            if vm.specs.hdd and any(vm.storage in h.storage_backends for h in eligible.values()):
                return Refusal("storage", f"no UP host offers HDD disks on storage {vm.storage} (it asks for "
                               f"{vm.specs.hdd} GiB HDD)")
            return Refusal("storage", f"no UP host offers storage {vm.storage}")
        candidates = [n for n in candidates if self._image_reachable(vm, n)]
        if not candidates:
            return Refusal("image", self._image_missing(vm))
        free_of_group = [n for n in candidates if n not in self._view.group_hosts(vm)
                         and (vm.owner, vm.anti_affinity, n) not in self._placed_groups]
        if not free_of_group:
            return Refusal("anti_affinity", f"every UP host already runs a VM of anti-affinity group {vm.anti_affinity}")
        for dim, unit, _ in DIMENSIONS:
            need = getattr(vm.specs, dim)
            best = max(free_of_group, key=lambda n: self._room(n)[dim])
            if need > self._room(best)[dim]:
                return Refusal(f"no_room_{dim}", f"no host has {_fmt(need)} {unit} free; the most free is "
                               f"{_fmt(max(self._room(best)[dim], 0))} {unit} on {best}")
        return Refusal("no_room", f"no host has {vm.specs.cpu} CPUs, {_fmt(vm.specs.ram)} GiB RAM, "
                       f"{vm.specs.ssd} GiB SSD and {vm.specs.hdd} GiB HDD free at once")

    def _image_missing(self, vm: VM) -> str:
        holders = sorted(name for name, host in self._view.hosts.items()
                         if host.value.images is not None and vm.image in host.value.images)
        if not holders:
            return (f"no host holds image {vm.image} in its local store (image-scanner puts an image in the "
                    "local store of the machine it runs on: run it beside a host's agent)")
        shown = ", ".join(holders[:5]) + (f" and {len(holders) - 5} more" if len(holders) > 5 else "")
        return (f"image {vm.image} is only on {shown}, which cannot take the VM, and no UP host can fetch it from "
                "a live one (hosts exchange images only with UCLOUD_IMAGE_SECRET set, both alive)")
