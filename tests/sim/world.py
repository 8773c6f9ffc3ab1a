"""A whole ucloud in simulated time: the real scheduler and agents over a `MemoryStore`, their VMs
in `FakeDriver`s, a fence that cuts guests off their disks, and an API that asks as the real one
does. Nothing runs in a thread: each simulated second, every scheduler runs a cycle and every
agent reconciles each of its VMs, and an invariant checker looks after every step.

Model: pve-ha-manager's `src/test/test-*/cmdlist` + `log.expect`, replayed by its simulator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.inline import InlineExecutor
from ucloud_common.ceph import CephUnavailable
from ucloud_common.clock import SimClock
from ucloud_common.config import Settings, load_settings
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host
from ucloud_common.specs import Specs
from ucloud_common.states import TRANSITIONS, Action, ActionRefused, Requested, Status, Writer
from ucloud_common.record import utcnow
from ucloud_common.store import Guard, GuardFailed, MemoryStore, Snapshot, StoreUnavailable, Versioned
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VM, VMS, request_fields
from ucloud_scheduler.fencing import FenceFailed
from ucloud_scheduler.scheduler import Scheduler
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.agent import MONITORED
from ucloud_vm.decide import Act, Seen, decide
from ucloud_vm.driver import LIVE
from ucloud_vm.fake_driver import FakeDriver
from ucloud_vm.storage import StorageError

CAPACITY = Specs(cpu=8, ram=16, ssd=100)
SPECS = Specs(cpu=1, ram=1, ssd=10)
ROUNDS = 6  # reconciles of one VM in one second at most (a step that looks again at once)


class InvariantBroken(AssertionError):
    pass


class Disks:
    """A storage backend: `rbd` shared by all hosts, `local` one per host (no HDD disks: the scenarios'
    VMs ask for none)."""

    offers_hdd = False

    def __init__(self, name: str, shared: set[str], client: str, world: World) -> None:
        self.name = name
        self._disks = shared
        self._client = client
        self._world = world

    def create(self, vm: VM) -> None:
        if vm.image == "ghost":
            raise StorageError(f"image {vm.image} is not in this host's image store")
        if self.name == "rbd" and self._world.ceph_down:
            raise CephUnavailable(f"cannot clone {vm.image} for {vm.uuid}: timed out", 5.0)
        self._disks.add(vm.uuid)

    def exists(self, vm: VM) -> bool:
        return vm.uuid in self._disks

    def drive(self, vm: VM) -> list[str]:
        return [f"file={self.name}:{vm.uuid}", "format=raw"]

    def hdd_drive(self, vm: VM) -> list[str] | None:
        return None

    def delete(self, vm: VM) -> None:
        self._disks.discard(vm.uuid)

    def clients(self, vm: VM) -> tuple[str, ...]:
        return (self._client,) if self.name == "rbd" else ()


@dataclass
class SimHost:
    name: str
    driver: FakeDriver
    store: MemoryStore  # this agent's own connection: cut off alone in a partition
    agent: Agent
    lease: int = 0
    up: bool = True  # its agent runs (the guests run on regardless)
    # What wakes a VM's worker in a real agent: a change of its record (the watch), its own look
    # again, the monitor, a periodic resync. The simulation wakes it for the same reasons only.
    seen: dict[str, int] = field(default_factory=dict)  # uuid → the mod_revision last reconciled on
    due: dict[str, float] = field(default_factory=dict)  # uuid → when it asked to be looked at again
    resynced_at: float = 0.0


@dataclass
class SimScheduler:
    name: str
    store: MemoryStore
    scheduler: Scheduler
    lease: int = 0
    guard: Guard | None = None
    up: bool = True


@dataclass
class SimFence:
    """Cuts a dead host's guests off their disks (they stop on I/O errors), or fails as told."""

    world: World
    fails: str = ""

    def fence(self, host: Host, vms: list[VM]) -> None:
        if self.fails:
            raise FenceFailed(self.fails)
        driver = self.world.hosts[host.name].driver
        cut = [vm.uuid for vm in vms if vm.uuid in driver.guests]
        for uuid in cut:  # as Ceph's blocklist does: the guest runs on, its writes fail
            driver.guests[uuid].fenced = True
        self.world.say("fence", f"{host.name} fenced" + (f": {', '.join(cut)} cut off" if cut else ""))


class _Leadership:
    """The scheduler's election kept in simulated time: the harness renews the leader's lease
    each second (the real `Election` renews it from a thread, in real time)."""

    def __init__(self, sim: SimScheduler) -> None:
        self._sim = sim

    @property
    def guard(self) -> Guard:
        if self._sim.guard is None:
            raise GuardFailed(f"{self._sim.name} is not the leader")
        return self._sim.guard

    @property
    def is_leader(self) -> bool:
        return self._sim.guard is not None


@dataclass
class World:
    settings: Settings
    clock: SimClock = field(default_factory=SimClock)
    store: MemoryStore = field(init=False)
    hosts: dict[str, SimHost] = field(default_factory=dict)
    schedulers: dict[str, SimScheduler] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    fence: SimFence = field(init=False)
    shared_disks: set[str] = field(default_factory=set)
    ceph_down: bool = False
    _start: float = field(init=False)

    def __post_init__(self) -> None:
        self.store = MemoryStore(self.settings)
        self.fence = SimFence(self)
        self._start = self.clock.time()

    # -- the log ----------------------------------------------------------------------------------

    def say(self, who: str, what: str) -> None:
        self.log.append(f"{self.clock.time() - self._start:6.0f}  {who:<12} {what}")

    # -- actors -----------------------------------------------------------------------------------

    def add_host(self, name: str) -> None:
        connection = self.store.connect()
        driver = FakeDriver(timeout=self.settings.qmp_timeout)
        storage = {"local": Disks("local", set(), f"{name}.local", self),
                   "rbd": Disks("rbd", self.shared_disks, f"client.{name}", self)}
        agent = Agent(connection, self.settings, HostSpec(name, f"10.0.0.{len(self.hosts) + 1}", CAPACITY), driver, storage)
        self.hosts[name] = SimHost(name, driver, connection, agent)
        self._register(self.hosts[name])

    def _register(self, host: SimHost) -> None:
        host.lease = host.store.grant_lease(self.settings.host_lease_ttl)
        host.agent.announce(host.lease)
        self.say(f"agent {host.name}", "registered")

    def add_scheduler(self, name: str) -> None:
        connection = self.store.connect()
        scheduler = Scheduler(connection, self.settings, self.fence, candidate=name, rng=random.Random(0),
                              fence_pool=InlineExecutor())
        sim = SimScheduler(name, connection, scheduler)
        scheduler.election = _Leadership(sim)  # type: ignore[assignment]
        self.schedulers[name] = sim

    def restart_agent(self, name: str) -> None:
        """`kill -9` of the agent and a new one within the lease's TTL: same host, same guests."""
        old = self.hosts[name]
        agent = Agent(old.store, self.settings, old.agent.host, old.driver, old.agent._storage)
        self.hosts[name] = SimHost(name, old.driver, old.store, agent, old.lease, up=True)
        self.say(f"agent {name}", "restarted")

    # -- the API ----------------------------------------------------------------------------------

    def create(self, name: str, storage: str = "local", image: str = "tiny", requested: str = "RUNNING") -> None:
        self.store.create(VMS, name, VM(uuid=name, owner="alice", name=name, specs=SPECS, image=image,
                                        storage=storage, requested=Requested(requested)))
        self.say("api", f"{name}: created ({storage})")

    def ask(self, name: str, action: str) -> None:
        found = self.store.get(VMS, name)
        assert found is not None, f"no VM {name}"
        try:
            fields = request_fields(found.value, Action(action))
        except ActionRefused as refused:
            self.say("api", f"{name}: 409 {refused}")
            return
        self.store.replace(VMS, name, found.value.evolve(**fields), found.mod_revision)
        self.say("api", f"{name}: {action} accepted")

    # -- time -------------------------------------------------------------------------------------

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1.0)
            self._renew_leases()
            for sim in self.schedulers.values():
                if sim.up:
                    self._schedule(sim)
            for host in self.hosts.values():
                if host.up:
                    self._reconcile(host)
            self.check_one_writer()

    def _renew_leases(self) -> None:
        for host in self.hosts.values():
            if host.up and not host.store.unavailable:
                if host.store.refresh_lease(host.lease) <= 0:
                    self.say(f"agent {host.name}", "lease lost; registering again")
                    self._register(host)
        for sim in self.schedulers.values():
            if not sim.up or sim.store.unavailable:
                continue
            if sim.guard is not None and sim.store.refresh_lease(sim.lease) > 0:
                continue
            if sim.guard is not None:
                self.say(f"scheduler {sim.name}", "lost the leadership")
            sim.lease = sim.store.grant_lease(self.settings.leader_lease_ttl)
            won, revision, _ = sim.store.create_key(leader_key("scheduler"), sim.name, sim.lease)
            sim.guard = Guard(leader_key("scheduler"), revision) if won else None
            if won:
                self.say(f"scheduler {sim.name}", "leads")
            else:
                sim.store.revoke_lease(sim.lease)

    def _schedule(self, sim: SimScheduler) -> None:
        if sim.guard is None:
            return
        scheduler = sim.scheduler
        try:
            scheduler.view.apply_hosts(Snapshot(*_listed(sim.store, HOSTS)))
            scheduler.view.apply_alive(Snapshot(*_listed(sim.store, HOSTS_ALIVE)))
            scheduler.view.apply_vms(Snapshot(*_listed(sim.store, VMS)))
            before = self._statuses()
            sentence = scheduler.run_cycle()
        except StoreUnavailable:
            return
        self._check_moves(before, Writer.SCHEDULER, f"scheduler {sim.name}")
        if sentence:
            self.say(f"scheduler {sim.name}", sentence)

    def _reconcile(self, host: SimHost) -> None:
        try:
            listing = host.store.list(VMS).items
        except StoreUnavailable:
            return
        now = self.clock.time()
        resync = now - host.resynced_at >= self.settings.resync_interval
        if resync:
            host.resynced_at = now
        placed = {uuid: vm for uuid, vm in listing.items() if vm.value.host == host.name}
        woken = [uuid for uuid in sorted(set(placed) | host.driver.leftovers() | set(host.seen))
                 if resync or self._wakes(host, uuid, listing.get(uuid), now)]
        for uuid in woken:
            host.due.pop(uuid, None)
            for _ in range(ROUNDS):
                before = self._statuses()
                found = listing.get(uuid)
                host.seen[uuid] = found.mod_revision if found else 0
                step = host.agent.reconcile(uuid)
                after = self._check_moves(before, Writer.AGENT, f"agent {host.name}")
                old, new = before.get(uuid), after.get(uuid)
                moved = f" [{old} → {new}]" if old and new and old is not new else ""
                if step.event or moved or step.act is not Act.NOTHING:
                    self.say(f"agent {host.name}", f"{uuid}: {step.sentence()}{moved}")
                if step.look_again is not None and step.look_again > 0:
                    host.due[uuid] = min(host.due.get(uuid, float("inf")), now + step.look_again)
                if step.look_again != 0:
                    break
                listing = host.store.list(VMS).items
            else:
                raise InvariantBroken(f"agent {host.name} looked at {uuid} again at once {ROUNDS} times")
            if uuid not in listing and uuid not in host.driver.leftovers():
                host.seen.pop(uuid, None)

    def _wakes(self, host: SimHost, uuid: str, found: Versioned[VM] | None, now: float) -> bool:
        """What would make a real agent look at this VM now."""
        revision = found.mod_revision if found else 0
        if host.seen.get(uuid) != revision or host.due.get(uuid, float("inf")) <= now:
            return True  # its record changed (or appeared, or went), or it asked to be looked at
        if found is None or found.value.status not in MONITORED:
            return False
        step = decide(found.value, Seen(host.driver.observe(uuid)), utcnow(), self.settings)
        return step.writes() or step.act is not Act.NOTHING  # the monitor's rule

    # -- invariants -------------------------------------------------------------------------------

    def _statuses(self) -> dict[str, Status]:
        try:
            with_keys = self.store.list(VMS).items  # the harness's own view, cut off only with etcd
        except StoreUnavailable:
            return {}
        return {uuid: vm.value.status for uuid, vm in with_keys.items()}

    def _check_moves(self, before: dict[str, Status], writer: Writer, who: str) -> dict[str, Status]:
        """Every status a writer changed is a move the state table allows it."""
        after = self._statuses()
        for uuid, old in before.items():
            new = after.get(uuid)
            if new is not None and new is not old and new not in TRANSITIONS[writer].get(old, frozenset()):
                raise InvariantBroken(f"{who} moved {uuid} from {old} to {new}: not in TRANSITIONS[{writer}]")
        return after

    def check_one_writer(self) -> None:
        """No VM's guest is live (running or paused, not cut off its disk by a fence) on two hosts:
        never two writers on one disk."""
        live: dict[str, list[str]] = {}
        for host in self.hosts.values():
            for uuid, guest in host.driver.guests.items():
                if guest.state in LIVE and not guest.fenced:
                    live.setdefault(uuid, []).append(host.name)
        doubled = {uuid: names for uuid, names in live.items() if len(names) > 1}
        if doubled:
            raise InvariantBroken(f"live on two hosts: {doubled}")

    def check_converged(self) -> None:
        """Every VM asked to run (or be suspended) on a live host is so, on the host its record
        names; every VM asked to stop has no live guest."""
        for uuid, found in self.store.list(VMS).items.items():
            vm = found.value
            host = self.hosts.get(vm.host)
            guest = host.driver.guests.get(uuid) if host else None
            if vm.requested is Requested.RUNNING:
                if host is None or not host.up:
                    continue
                assert vm.status is Status.RUNNING and guest is not None and guest.state.value == "running" \
                    and not guest.fenced, \
                    f"{uuid} asked to run is {vm.status} on {vm.host or 'no host'}"
            elif vm.requested is Requested.SUSPENDED and host is not None and host.up:
                assert vm.status is Status.SUSPENDED and guest is not None and guest.state.value == "paused", \
                    f"{uuid} asked to be suspended is {vm.status}"
            elif vm.requested is Requested.STOPPED:
                assert vm.status in (Status.STOPPED, Status.ERROR) and guest is None, f"{uuid} asked to stop is {vm.status}"

    def vm(self, name: str) -> VM:
        found = self.store.get(VMS, name)
        assert found is not None, f"no VM {name}"
        return found.value


def _listed(store: MemoryStore, family: object) -> tuple[dict[str, object], int]:
    listing = store.list(family)  # type: ignore[arg-type]
    return listing.items, listing.revision  # type: ignore[return-value]


def new_world(tmp: Path, **settings: object) -> World:
    conf = tmp / "sim.conf"
    conf.write_text("")
    defaults: dict[str, object] = {"host_lease_ttl": 10, "heartbeat_interval": 1.0, "leader_lease_ttl": 10,
                                   "max_restarts": 3, "shutdown_timeout": 30, "failure_retry": 60}
    return World(load_settings(conf, **{**defaults, **settings}))

