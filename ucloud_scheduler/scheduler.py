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
from ucloud_common.vm import VM, VMS
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
        self._fencing: dict[str, Future[None]] = {}
        self._fence_failed_at: dict[str, float] = {}
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
                self._release_after_fence(self.view.hosts[name], cycle)
            elif alive and host.value.status is HostStatus.UP and host.value.fenced:
                # It returned; the KILLED VMs that stayed with it are its agent's to restart.
                self._store.update(HOSTS, name, lambda h: h.evolve(fenced=False, down_since=None), guard=guard)
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
        victims = [vm for vm in self.view.vms_on(name) if vm.value.status in ON_HOST]
        cycle.killed += self._write(victims, lambda vm: self._killed(vm, name), f"killed: host {name} died")

    def _killed(self, vm: VM, host: str) -> VM:
        check_transition(Writer.SCHEDULER, vm.status, Status.KILLED)
        if vm.storage in SHARED_STORAGE:
            why = f"host {host} died; restarting it elsewhere once the host is fenced"
        else:
            why = f"host {host} died; its disk is local to that host: it restarts when the host returns"
        return vm.evolve(status=Status.KILLED, error=why)

    def _release_after_fence(self, host: Versioned[Host], cycle: Cycle) -> None:
        """Once the dead host is fenced, let its shared-storage VMs that want to run go elsewhere."""
        name = host.name
        waiting = [vm for vm in self.view.vms_on(name) if vm.value.status is Status.KILLED
                   and vm.value.storage in SHARED_STORAGE and vm.value.requested in WANTS_TO_RUN]
        if not waiting:
            return
        if not host.value.fenced:
            self._start_fence(host.value, [vm.value for vm in waiting])
            return
        cycle.released += self._write(waiting, lambda vm: vm.evolve(hostname="", error=""),
                                      f"host {name} is fenced: to be placed elsewhere")

    def _start_fence(self, host: Host, vms: list[VM]) -> None:
        running = self._fencing.get(host.name)
        if running is not None and not running.done():
            return
        if running is not None:
            self._fencing.pop(host.name)
            error = running.exception()
            if error is None:
                self._store.update(HOSTS, host.name, lambda h: h.evolve(fenced=True)
                                   if h.status is HostStatus.DOWN else None, guard=self.election.guard)
                log.info("host %s is fenced", host.name)
                return
            log.error("fencing host %s failed: %s", host.name, error)
            self._fence_failed_at[host.name] = _now()
            self._note_fence_failure(host.name, str(error))
            return
        if _now() - self._fence_failed_at.get(host.name, -FENCE_RETRY_S) < FENCE_RETRY_S:
            return
        log.info("fencing host %s", host.name)
        future = self._fence_pool.submit(self._fence.fence, host, vms)
        future.add_done_callback(lambda _: self._inbox.put(("wake", None)))
        self._fencing[host.name] = future

    def _note_fence_failure(self, host: str, reason: str) -> None:
        waiting = [vm for vm in self.view.vms_on(host) if vm.value.status is Status.KILLED
                   and vm.value.storage in SHARED_STORAGE]
        error = f"host {host} died and could not be fenced ({reason}); waits for the host or for fencing"
        self._write([vm for vm in waiting if vm.value.error != error], lambda vm: vm.evolve(error=error),
                    f"host {host} not fenced: {reason}")

    def _deploy(self, vm: VM, host_key: str) -> VM:
        check_transition(Writer.SCHEDULER, vm.status, Status.SCHEDULED_DEPLOY)
        return vm.evolve(status=Status.SCHEDULED_DEPLOY, hostname=host_key, error="")

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
                placed.append((vm, self._deploy(vm.value, HOSTS.key(host)), f"placed on {host}"))
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


def _now() -> float:
    return time.monotonic()
