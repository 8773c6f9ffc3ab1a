"""The hosts a VM may be placed on, ordered by weight and kept up to date change by change.

`View` tells its `HostIndex` of every change to a host's record, liveness or allocations; the index
re-weighs that one host (O(log hosts)) instead of a placement weighing them all. Entries are
`(weight, tiebreak, name, room)` in a heap with lazy deletion: an entry is current only while it is
the one `entries` holds for its host, and the heap is rebuilt once stale entries outnumber current
ones, so its size stays within twice the number of hosts.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from ucloud_common.host import Host, HostStatus
from ucloud_common.specs import Specs


@dataclass(frozen=True)
class Ratios:
    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0


# (dimension, unit, ratio)
DIMENSIONS = (("cpu", "CPUs", "cpu"), ("ram", "GiB RAM", "ram"), ("ssd", "GiB SSD", "disk"), ("hdd", "GiB HDD", "disk"))


def free(host: Host, allocated: Specs, ratios: Ratios) -> dict[str, float]:
    return {dim: getattr(host.capacity, dim) * getattr(ratios, ratio) - getattr(allocated, dim)
            for dim, _, ratio in DIMENSIONS}


def weight(host: Host, room: dict[str, float], ratios: Ratios, sign: float) -> float:
    """`sign` × the free share of the host's scarcest resource: the heap's smallest is the best."""
    shares = [room[dim] / (getattr(host.capacity, dim) * getattr(ratios, ratio))
              for dim, _, ratio in DIMENSIONS if getattr(host.capacity, dim) > 0]
    return sign * min(shares, default=0.0)


def eligible(host: Host, alive: bool) -> bool:
    return host.status is HostStatus.UP and not host.maintenance and alive


@dataclass(frozen=True, order=True, slots=True)
class Entry:
    weight: float
    tiebreak: float  # ties of weight are broken at random
    name: str
    room: dict[str, float] = field(compare=False)


class HostIndex:
    """The eligible hosts by weight for one set of ratios and one placement mode."""

    def __init__(self, ratios: Ratios, sign: float, rng: random.Random) -> None:
        self.ratios = ratios
        self.sign = sign
        self.rng = rng
        self.hosts: dict[str, Host] = {}  # the eligible hosts, by name
        self.entries: dict[str, Entry] = {}  # the current entry of each eligible host
        self.heap: list[Entry] = []
        self.lent: list[Entry] = []  # popped by a `Placer` for its batch: back in `heap` for the next
        # Per dimension, a heap of (-room, name, entry): the most any host has free, lazily.
        self._most: dict[str, list[tuple[float, str, Entry]]] = {dim: [] for dim, _, _ in DIMENSIONS}

    def update(self, name: str, host: Host | None, alive: bool, allocated: Specs) -> None:
        """Take in the host's current record, liveness and allocations."""
        if host is None or not eligible(host, alive):
            self.hosts.pop(name, None)
            self.entries.pop(name, None)
            return
        self.hosts[name] = host
        room = free(host, allocated, self.ratios)
        new = weight(host, room, self.ratios, self.sign)
        old = self.entries.get(name)
        if old is not None and old.room == room and old.weight == new:
            return  # keeps its place (and its tiebreak)
        self.push(Entry(new, self.rng.random(), name, room))

    def push(self, entry: Entry) -> None:
        self.entries[entry.name] = entry
        heapq.heappush(self.heap, entry)
        for dim, most in self._most.items():
            heapq.heappush(most, (-entry.room[dim], entry.name, entry))
        if len(self.heap) > 2 * len(self.entries) + 64:
            self.heap = list(self.entries.values())
            self.lent = []  # in the heap again
            heapq.heapify(self.heap)
            for dim in self._most:
                self._most[dim] = [(-e.room[dim], e.name, e) for e in self.entries.values()]
                heapq.heapify(self._most[dim])

    def take_back(self) -> None:
        """Put the entries the last batch lent back in the heap (a batch uses its own for them)."""
        for entry in self.lent:
            if self.current(entry):
                heapq.heappush(self.heap, entry)
        self.lent = []

    def current(self, entry: Entry) -> bool:
        return self.entries.get(entry.name) is entry

    def most(self, dim: str) -> float:
        """The most of `dim` any eligible host has free (0 without hosts)."""
        heap = self._most[dim]
        while heap and not self.current(heap[0][2]):
            heapq.heappop(heap)
        return -heap[0][0] if heap else 0.0
