"""The view's incremental host index (and its set of hosts a cycle must look at) against a
placement computed from scratch, after random sequences of host, liveness and VM changes (no etcd)."""

from __future__ import annotations

import random

import pytest

from tests.scheduler.views import host, view_with, vm
from ucloud_common.allocation import ZERO, allocations
from ucloud_common.config import load_settings
from ucloud_common.host import Host, HostStatus
from ucloud_common.states import Status
from ucloud_common.store import Change, Versioned
from ucloud_common.vm import VM, placed_on
from ucloud_scheduler import hostindex, placement
from ucloud_scheduler.hostindex import Ratios, eligible, free, weight
from ucloud_scheduler.placement import Placer, fits
from ucloud_scheduler.plan import plan_cycle
from ucloud_scheduler.view import View

RATIOS = Ratios(cpu=2.0, ram=1.0, disk=1.0)


class World:
    """A view fed change by change, and the same hosts, liveness and VMs kept plainly."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.view = View()
        self.hosts: dict[str, Host] = {}
        self.alive: set[str] = set()
        self.vms: dict[str, VM] = {}
        self.revision = 1

    def _next(self) -> int:
        self.revision += 1
        return self.revision

    def set_host(self, name: str) -> None:
        rng = self.rng
        record = host(name, cpu=rng.choice([2, 4, 8]), ram=rng.choice([4, 8, 16]), ssd=rng.choice([40, 100]),
                      status=rng.choice([HostStatus.UP] * 4 + [HostStatus.DOWN]), maintenance=rng.random() < 0.2,
                      drain=rng.random() < 0.5, fenced=rng.random() < 0.1,
                      storage_backends=rng.choice([("local",), ("local", "rbd"), ("rbd",)]))
        self.hosts[name] = record
        revision = self._next()
        self.view.apply_hosts(Change(name, Versioned(name, record, revision, revision), revision))

    def drop_host(self, name: str) -> None:
        self.hosts.pop(name, None)
        self.view.apply_hosts(Change(name, None, self._next()))

    def set_alive(self, name: str, alive: bool) -> None:
        (self.alive.add if alive else self.alive.discard)(name)
        revision = self._next()
        value = Versioned(name, object(), revision, revision) if alive else None
        self.view.apply_alive(Change(name, value, revision))  # type: ignore[arg-type]

    def set_vm(self, record: VM) -> None:
        self.vms[record.uuid] = record
        revision = self._next()
        self.view.apply_vms(Change(record.uuid, Versioned(record.uuid, record, revision, revision), revision))

    def drop_vm(self, uuid: str) -> None:
        self.vms.pop(uuid, None)
        self.view.apply_vms(Change(uuid, None, self._next()))

    def new_vm(self, uuid: str) -> VM:
        rng = self.rng
        return vm(uuid, cpu=rng.choice([1, 2, 4]), ram=rng.choice([1, 2, 8]), ssd=rng.choice([10, 30]),
                  storage=rng.choice(["local", "local", "rbd"]), anti_affinity=rng.choice(["", "", "g1", "g2"]))

    def change(self, step: int) -> None:
        rng, names = self.rng, [f"h{i}" for i in range(8)]
        what = rng.random()
        if what < 0.25:
            self.set_host(rng.choice(names))
        elif what < 0.3:
            self.drop_host(rng.choice(names))
        elif what < 0.45:
            self.set_alive(rng.choice(names), rng.random() < 0.8)
        elif what < 0.75 or not self.vms:
            on = rng.choice(names)
            self.set_vm(self.new_vm(f"v{step}").evolve(**placed_on(on), status=Status.RUNNING))
        elif what < 0.9:
            self.drop_vm(rng.choice(sorted(self.vms)))
        else:  # moved to another host
            self.set_vm(self.vms[rng.choice(sorted(self.vms))].evolve(**placed_on(rng.choice(names))))


def check_batch(world: World, sign: float, rng: random.Random, size: int) -> list[tuple[VM, str]]:
    """Place `size` new VMs with a `Placer` on the view, each checked against the best host
    computed from scratch (the same weight: ties are broken at random)."""
    placer = Placer(world.view, RATIOS, "spread" if sign < 0 else "pack", rng)
    used = allocations(world.vms.values())
    room = {name: free(h, used.get(name, ZERO), RATIOS) for name, h in world.hosts.items()
            if eligible(h, name in world.alive)}
    assert set(placer.eligible) == set(room)
    assert world.view.unsettled == {name for name, h in world.hosts.items()
                                    if name not in world.alive or h.fenced or (h.maintenance and h.drain)}
    groups = {(v.owner, v.anti_affinity, v.host) for v in world.vms.values() if v.anti_affinity and v.host}
    placed = []
    for i in range(size):
        new = world.new_vm(f"n{world.revision}-{i}")
        allowed = {name: weight(world.hosts[name], r, RATIOS, sign) for name, r in room.items()
                   if new.storage in world.hosts[name].storage_backends and fits(new, r)
                   and (not new.anti_affinity or (new.owner, new.anti_affinity, name) not in groups)}
        chosen = placer.place(new)
        if not allowed:
            assert chosen is None
            continue
        assert chosen is not None and allowed[chosen] == min(allowed.values()), (chosen, allowed)
        for dim in room[chosen]:
            room[chosen][dim] -= getattr(new.specs, dim)
        if new.anti_affinity:
            groups.add((new.owner, new.anti_affinity, chosen))
        placed.append((new, chosen))
    return placed


@pytest.mark.parametrize("seed", range(30))
def test_incremental_index_chooses_as_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    world = World(rng)
    placement_rng = random.Random(seed)
    for step in range(300):
        world.change(step)
        if step % 7 == 0:
            sign = -1.0 if (step // 70) % 2 == 0 else 1.0  # a change of mode rebuilds the index
            placed = check_batch(world, sign, placement_rng, rng.randint(1, 6))
            if rng.random() < 0.7:  # written; else a conflict left them pending
                for new, chosen in placed:
                    world.set_vm(new.evolve(**placed_on(chosen), status=Status.SCHEDULED_DEPLOY))


def test_a_cycle_weighs_only_the_hosts_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(etcd_endpoints="http://127.0.0.1:1")
    view = view_with(*(host(f"h{i:04}") for i in range(2000)))
    rng = random.Random(1)
    weighed: list[str] = []

    def counted(h: Host, room: dict[str, float], ratios: Ratios, sign: float) -> float:
        weighed.append(h.name)
        return weight(h, room, ratios, sign)

    monkeypatch.setattr(hostindex, "weight", counted)
    monkeypatch.setattr(placement, "weight", counted)
    for cycle in range(3):
        new = vm(f"v{cycle}")
        view.apply_vms(Change(new.uuid, Versioned(new.uuid, new, 10 + 2 * cycle, 10 + 2 * cycle), 10 + 2 * cycle))
        weighed.clear()
        (placed,) = plan_cycle(view, {}, settings, 0.0, rng).placed
        if cycle:  # the first builds the index: every host once
            assert len(weighed) == 1, "only the chosen host is weighed again, in the batch's own heap"
        chosen = placed.seen.value.evolve(**placed.changes)
        weighed.clear()
        view.set_vm(Versioned(new.uuid, chosen, 11 + 2 * cycle, 10 + 2 * cycle))
        assert weighed == [chosen.host], "taking the write in re-weighs that host alone"
