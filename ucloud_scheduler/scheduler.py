"""The scheduler: a reconcile loop over VMs and hosts, acting only while it is the elected leader.

Three followers (VMs, hosts, host liveness) feed one inbox; the loop folds what arrives into the
view and, when something changed or the cadence ticks, runs a cycle: declare dead hosts DOWN and
kill their VMs, fence, release the fenced hosts' shared-storage VMs, place the VMs that wait for a
host. (A KILLED VM that stayed with its host is restarted there by that host's agent.) Every
write is a compare-and-swap guarded by the leadership, batched per cycle, and told in each VM's
event log. `run_cycle()` returns one sentence saying what it decided.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
import uuid as uuidlib
from datetime import datetime
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ucloud_common.allocation import SHARED_STORAGE
from ucloud_common.config import Settings
from ucloud_common.event import new_event
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostStatus
from ucloud_common.record import utcnow
from ucloud_common.states import ON_HOST, Status, Writer, check_transition
from ucloud_common.store import (
    Conflict,
    Election,
    Follower,
    GuardFailed,
    Put,
    Store,
    StoreUnavailable,
    Versioned,
)
from ucloud_common.supervise import Supervisor
from ucloud_common.vm import VM, VMS, placed_on
from ucloud_scheduler.fencing import Fence
from ucloud_scheduler.placement import Placer, Ratios
from ucloud_scheduler.view import WANTS_TO_RUN, View

log = logging.getLogger(__name__)


CADENCE_S = 1.0  # a cycle runs at least this often, so a lost wake-up costs one second
BATCH = 60  # VMs per transaction: each is two operations (VM, event), etcd allows 128
FENCE_RETRY_S = 30.0


@dataclass
class Cycle:
    placed: int = 0
    unplaceable: int = 0
    killed: int = 0
    released: int = 0
    down: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        parts = []
        if self.down:
            parts.append(f"hosts DOWN: {', '.join(self.down)}")
        for count, what in ((self.killed, "killed"), (self.released, "released to other hosts after fencing"),
                            (self.placed, "placed"),
                            (self.unplaceable, "unplaceable")):
            if count:
                parts.append(f"{count} VMs {what}")
        return "; ".join(parts)


class Scheduler:
    def __init__(self, store: Store, settings: Settings, fence: Fence, candidate: str | None = None,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._settings = settings
        self._fence = fence
        self._rng = rng or random.Random()
        self.candidate = candidate or f"scheduler-{uuidlib.uuid4().hex[:8]}"
        self.election = Election(store, "scheduler", self.candidate, settings.leader_lease_ttl)
        self._source = f"scheduler {self.candidate}"
        self.view = View()
        self._ratios = Ratios(settings.cpu_allocation_ratio, settings.ram_allocation_ratio,
                              settings.disk_allocation_ratio)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._followers = {
            "vm": Follower(store, VMS, resync_interval=settings.resync_interval),
            "host": Follower(store, HOSTS, resync_interval=settings.resync_interval),
            "alive": Follower(store, HOSTS_ALIVE, resync_interval=settings.resync_interval),
        }
        self._ready: set[str] = set()
        # Per host, for its current outage (`down_since`): the fence running, the VMs fenced, when
        # the last fence failed.
        self._fencing: dict[str, _Fencing] = {}
        self._fenced: dict[str, tuple[datetime | None, frozenset[str]]] = {}
        self._fence_failed_at: dict[str, tuple[datetime | None, float]] = {}
        self._fence_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fence")
        self._stop = threading.Event()
        self._supervisor: Supervisor | None = None

    # -- the process ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Schedule until `stop` is set, or until an essential part fails: a follower or the
        election thread ending, or the loop itself raising. Then `failure` says which and why, and
        the caller must exit non-zero (a fresh process starts from a fresh view). Either way the
        leadership is given up before this returns, so a standby takes over at once."""
        self._stop = stop
        self._supervisor = Supervisor(stop, wake=lambda: self._inbox.put(("wake", None)))
        for kind, follower in self._followers.items():
            self._supervisor.start(f"follow-{kind}", functools.partial(self._follow, kind, follower))
        self._supervisor.start("election", self._lead)
        try:
            self._loop(stop)
        except Exception as exc:  # noqa: BLE001 - reported by the supervisor: it ends the process
            self._supervisor.fail("loop", f"raised {type(exc).__name__}: {exc}", exc)
        finally:
            self._shut_down()

    @property
    def failure(self) -> str | None:
        """Why the scheduler stopped by itself (None: it was stopped, or still runs)."""
        return self._supervisor.failure if self._supervisor else None

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            changed = self._drain(timeout=CADENCE_S)
            if len(self._ready) < len(self._followers) or not self.election.is_leader:
                # What this process fenced or tried was for its own tenure: a leader again later
                # fences afresh (fencing is idempotent) rather than trust what another may have undone.
                self._fencing.clear()
                self._fenced.clear()
                self._fence_failed_at.clear()
                continue
            try:
                sentence = self.run_cycle()
            except GuardFailed:
                log.warning("%s lost the leadership during a cycle; its writes were refused", self.candidate)
                continue
            except StoreUnavailable as exc:
                log.warning("cycle skipped: %s", exc)
                stop.wait(1.0)
                continue
            except Exception:  # an exception never kills the loop: log it, try again next cycle
                log.exception("cycle failed")
                continue
            if sentence:
                log.info("cycle: %s", sentence)
            elif changed:
                log.debug("cycle: nothing to do")

    def _shut_down(self) -> None:
        for follower in self._followers.values():
            follower.stop()
        # A campaign still running could win again after the resignation: let the threads end first
        # (each notices `stop` within one etcd call).
        still = self._supervisor.join(self._settings.etcd_timeout + 1.0) if self._supervisor else []
        if still:
            log.warning("threads still running at shutdown: %s", ", ".join(still))
        self.election.resign()
        self._fence_pool.shutdown(wait=False, cancel_futures=True)

    def _follow(self, kind: str, follower: Follower[Any]) -> None:
        for item in follower:
            self._inbox.put((kind, item))

    def _lead(self) -> None:
        while not self._stop.is_set():
            if self.election.campaign(self._stop):
                log.info("%s leads; placing", self.candidate)
                self._inbox.put(("wake", None))
                while self.election.is_leader and not self._stop.wait(0.2):
                    pass
                if not self._stop.is_set():
                    log.warning("%s is no longer the leader; standing by", self.candidate)

    def _drain(self, timeout: float) -> bool:
        """Fold everything waiting in the inbox into the view; True if anything came."""
        try:
            items = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return False
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for kind, item in items:
            if kind == "vm":
                self.view.apply_vms(item)
            elif kind == "host":
                self.view.apply_hosts(item)
            elif kind == "alive":
                self.view.apply_alive(item)
            else:
                continue
            if not hasattr(item, "name"):
                self._ready.add(kind)
        return True

    # -- one cycle --------------------------------------------------------------------------------

    def run_cycle(self) -> str:
        cycle = Cycle()
        guard = self.election.guard
        for name, host in list(self.view.hosts.items()):
            alive = self.view.is_alive(name)
            if host.value.status is HostStatus.UP and self.view.known_dead(host):
                self._declare_down(host, cycle)
            elif host.value.status is HostStatus.DOWN and not alive:
                # Again every cycle: a VM whose KILLED write was lost (an outage, a lost race) when
                # the host was declared DOWN would otherwise stay RUNNING on a dead host for good.
                self._kill_on(name, cycle)
                self._release_after_fence(self.view.hosts[name], cycle)
            elif alive:
                self._forget_fencing(name)  # this outage is over: the next one is fenced anew
                if host.value.status is HostStatus.UP and host.value.fenced and not self._fenced_left(name):
                    # It returned, and its agent has restarted (never re-adopted) the fenced VMs
                    # that stayed with it: their old QEMUs were cut off from their disks.
                    self._store.update(HOSTS, name, lambda h: h.evolve(fenced=False, down_since=None),
                                       guard=guard)
        self._place(cycle)
        return cycle.sentence()

    def _declare_down(self, host: Versioned[Host], cycle: Cycle) -> None:
        guard = self.election.guard
        name = host.name
        self._store.update(HOSTS, name, lambda h: h.evolve(status=HostStatus.DOWN, down_since=utcnow(),
                                                            fenced=False) if h.status is HostStatus.UP else None,
                           guard=guard)
        log.warning("host %s is DOWN: its lease expired", name)
        cycle.down.append(name)
        self._kill_on(name, cycle)

    def _kill_on(self, name: str, cycle: Cycle) -> None:
        victims = [vm for vm in self.view.vms_on(name) if vm.value.status in ON_HOST]
        cycle.killed += self._write(victims, lambda vm: self._killed(vm, name), f"killed: host {name} died")

    def _fenced_left(self, name: str) -> bool:
        """Whether VMs that a fence may have cut off still wait on the host as KILLED."""
        return any(vm.value.status is Status.KILLED and vm.value.storage in SHARED_STORAGE
                   for vm in self.view.vms_on(name))

    def _killed(self, vm: VM, host: str) -> VM:
        check_transition(Writer.SCHEDULER, vm.status, Status.KILLED)
        if vm.storage in SHARED_STORAGE:
            why = f"host {host} died; restarting it elsewhere once the host is fenced"
        else:
            why = f"host {host} died; its disk is local to that host: it restarts when the host returns"
        return vm.evolve(status=Status.KILLED, error=why)

    def _release_after_fence(self, host: Versioned[Host], cycle: Cycle) -> None:
        """Let the dead host's shared-storage VMs that want to run go elsewhere — each only once a
        fence of this outage (the host's `down_since`) has cut it off; the others get a fence."""
        name, outage = host.name, host.value.down_since
        waiting = [vm for vm in self.view.vms_on(name) if vm.value.status is Status.KILLED
                   and vm.value.storage in SHARED_STORAGE and vm.value.requested in WANTS_TO_RUN]
        if not waiting:
            return
        done_outage, fenced = self._fenced.get(name, (None, frozenset()))
        if done_outage != outage:
            fenced = frozenset()
        ready = [vm for vm in waiting if vm.name in fenced]
        if ready:
            cycle.released += self._write(ready, lambda vm: vm.evolve(**placed_on(""), error=""),
                                          f"host {name} is fenced: to be placed elsewhere")
        rest = [vm.name for vm in waiting if vm.name not in fenced]
        if rest:
            self._start_fence(host.value, rest)

    def _start_fence(self, host: Host, uuids: list[str]) -> None:
        """Fence the host for these VMs in the background, at most one fence per host at a time; a
        finished one is taken in here, if it was for the host's current outage."""
        name, outage = host.name, host.down_since
        running = self._fencing.get(name)
        if running is not None and running.outage != outage:
            running = None  # for an earlier outage: whatever it did says nothing about this one
            del self._fencing[name]
        if running is not None and not running.future.done():
            return
        if running is not None:
            del self._fencing[name]
            error = running.future.exception()
            if error is None:
                earlier_outage, earlier = self._fenced.get(name, (None, frozenset()))
                self._fenced[name] = (outage, (earlier if earlier_outage == outage else frozenset())
                                      | running.future.result())
                self._store.update(HOSTS, name, lambda h: h.evolve(fenced=True)
                                   if h.status is HostStatus.DOWN and h.down_since == outage else None,
                                   guard=self.election.guard)
                log.info("host %s is fenced", name)
                self._inbox.put(("wake", None))  # release what it fenced at once
                return
            log.error("fencing host %s failed: %s", name, error)
            self._fence_failed_at[name] = (outage, _now())
            self._note_fence_failure(name, str(error))
            return
        failed_outage, failed_at = self._fence_failed_at.get(name, (None, 0.0))
        if failed_outage == outage and _now() - failed_at < FENCE_RETRY_S:
            return
        log.info("fencing host %s", name)
        future = self._fence_pool.submit(self._fence_current, host, uuids)
        future.add_done_callback(lambda _: self._inbox.put(("wake", None)))
        self._fencing[name] = _Fencing(outage, future)

    def _fence_current(self, host: Host, uuids: list[str]) -> frozenset[str]:
        """Fence `host` for those of the VMs that etcd says are still KILLED on it (the view may lag
        behind, e.g. just after a leader change: a VM already moved on must never be fenced, as
        that would cut off its healthy new QEMU); return the uuids fenced."""
        current = [found.value for found in (self._store.get(VMS, uuid) for uuid in uuids)
                   if found is not None and found.value.host == host.name and found.value.status is Status.KILLED]
        self._fence.fence(host, current)
        return frozenset(vm.uuid for vm in current)

    def _forget_fencing(self, name: str) -> None:
        self._fencing.pop(name, None)
        self._fenced.pop(name, None)
        self._fence_failed_at.pop(name, None)

    def _note_fence_failure(self, host: str, reason: str) -> None:
        waiting = [vm for vm in self.view.vms_on(host) if vm.value.status is Status.KILLED
                   and vm.value.storage in SHARED_STORAGE]
        error = f"host {host} died and could not be fenced ({reason}); waits for the host or for fencing"
        self._write([vm for vm in waiting if vm.value.error != error], lambda vm: vm.evolve(error=error),
                    f"host {host} not fenced: {reason}")

    def _deploy(self, vm: VM, host: str) -> VM:
        check_transition(Writer.SCHEDULER, vm.status, Status.SCHEDULED_DEPLOY)
        return vm.evolve(status=Status.SCHEDULED_DEPLOY, **placed_on(host), error="")

    def _place(self, cycle: Cycle) -> None:
        if not self.view.pending:
            return
        placer = Placer(self.view, self._ratios, self._settings.placement, self._rng)
        placed: list[tuple[Versioned[VM], VM, str]] = []
        refused: list[tuple[Versioned[VM], VM, str]] = []
        for uuid in list(self.view.pending):
            vm = self.view.vms[uuid]
            host = placer.place(vm.value)
            if host is not None:
                placed.append((vm, self._deploy(vm.value, host), f"placed on {host}"))
                continue
            reason = placer.why_not(vm.value)
            if vm.value.error != reason:
                refused.append((vm, vm.value.evolve(error=reason), f"unschedulable: {reason}"))
            cycle.unplaceable += 1
        cycle.placed += self._commit(placed)
        self._commit(refused)

    # -- writing ----------------------------------------------------------------------------------

    def _write(self, vms: list[Versioned[VM]], change: Callable[[VM], VM], message: str) -> int:
        return self._commit([(vm, change(vm.value), message) for vm in vms])

    def _commit(self, decisions: list[tuple[Versioned[VM], VM, str]]) -> int:
        """Write decisions in batches, each VM compared with the revision the decision saw; a VM
        that changed meanwhile is left out (the next cycle decides again on its new state).
        Returns how many were written."""
        written = 0
        guard = self.election.guard
        for start in range(0, len(decisions), BATCH):
            batch = {vm.name: (vm, new, message) for vm, new, message in decisions[start:start + BATCH]}
            while batch:
                writes: list[Put[Any]] = []
                for vm, new, message in batch.values():
                    writes += [Put(VMS, vm.name, new, vm.mod_revision), new_event(vm.name, self._source, message)]
                try:
                    revision = self._store.transact(writes, guard=guard)
                except Conflict as exc:
                    stale = VMS.name_of(exc.key) if exc.key.startswith(VMS.prefix) else None
                    if stale is None or stale not in batch:
                        raise
                    log.debug("vm=%s changed under a decision; deciding again next cycle", stale)
                    del batch[stale]
                    continue
                for vm, new, message in batch.values():
                    self.view.set_vm(Versioned(vm.name, new, revision, vm.create_revision))
                    log.info("vm=%s %s", vm.name, message)
                written += len(batch)
                break
        return written


@dataclass(frozen=True)
class _Fencing:
    outage: datetime | None  # the host's down_since when the fence started
    future: Future[frozenset[str]]  # the uuids of the VMs it fenced


def _now() -> float:
    return time.monotonic()
