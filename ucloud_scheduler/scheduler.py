"""The scheduler: a reconcile loop over VMs and hosts, acting only while it is the elected leader.

Three followers (VMs, hosts, host liveness) feed one inbox; the loop folds what arrives into the
view and, when something changed or the cadence ticks, runs a cycle: `plan_cycle` decides on the
view (declare dead hosts DOWN and kill their VMs, fence, release the fenced hosts' shared-storage
VMs, place the VMs that wait for a host; see plan.py), and `apply` carries the plan out. (A KILLED
VM that stayed with its host is restarted there by that host's agent.) Every write is a
compare-and-swap guarded by the leadership, batched per cycle, and told in each VM's event log.
`run_cycle()` returns one sentence saying what it decided.

Without its threads (a simulation): feed `view` by hand, win `election.campaign()`, pass a
`fence_pool` that runs fences inline, and call `run_cycle()`; a finished fence is taken in by the
next cycle.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from ucloud_common import clock
from ucloud_common.config import Settings
from ucloud_common.event import Kind, event_leases, new_event, ref
from ucloud_common.logs import acting_for
from ucloud_common.failures import Failures
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostStatus
from ucloud_common.record import utcnow
from ucloud_common.states import Status
from ucloud_common.store import (
    AbstractStore,
    Conflict,
    Election,
    Follower,
    GuardFailed,
    LeaseExpired,
    Put,
    Snapshot,
    StoreUnavailable,
    Versioned,
)
from ucloud_common.quota import QuotaExceeded, change, charged
from ucloud_common.supervise import Supervisor
from ucloud_common.vm import VMS
from ucloud_scheduler import metrics
from ucloud_scheduler.fencing import Fence
from ucloud_scheduler.plan import (
    FenceDone,
    FenceStart,
    Fencing,
    Plan,
    VMWrite,
    plan_cycle,
    refused_resize,
)
from ucloud_scheduler.view import View

log = logging.getLogger(__name__)


BATCH = 60  # VMs per transaction: each is two operations (VM, event), etcd allows 128


class Scheduler:
    def __init__(self, store: AbstractStore, settings: Settings, fence: Fence, candidate: str | None = None,
                 rng: random.Random | None = None, fence_pool: Executor | None = None) -> None:
        """`fence_pool` runs the fences (default: 4 threads; a simulation passes one that runs them
        inline); the scheduler shuts it down when it stops."""
        self._store = store
        self._settings = settings
        self._fence = fence
        self._rng = rng or random.Random()
        self.candidate = candidate or f"scheduler-{uuidlib.uuid4().hex[:8]}"
        self.election = Election(store, "scheduler", self.candidate, settings.leader_lease_ttl)
        self._source = f"scheduler {self.candidate}"
        self.view = View()
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._followers = {
            "vm": Follower(store, VMS, resync_interval=settings.resync_interval),
            "host": Follower(store, HOSTS, resync_interval=settings.resync_interval),
            "alive": Follower(store, HOSTS_ALIVE, resync_interval=settings.resync_interval),
        }
        self._folds: dict[str, Callable[[View, Any], None]] = {
            "vm": View.apply_vms, "host": View.apply_hosts, "alive": View.apply_alive}
        self._fold_failures = Failures("folding into the view")
        self._ready: set[str] = set()
        # Per host name, for one outage (`down_since`): what its fences did, and the one running.
        self._fencing: dict[str, tuple[Fencing, Future[frozenset[str]] | None]] = {}
        self._fence_pool = fence_pool or ThreadPoolExecutor(max_workers=4, thread_name_prefix="fence")
        self._stop = threading.Event()
        self._supervisor: Supervisor | None = None

    # -- the process ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Schedule until `stop` is set. The followers, the election and the loop go on whatever
        one turn or item raises (`Supervisor.loop`/`follow`/`keep_going`); should a thread end
        anyway, `failure` says which and why, and the caller must exit non-zero (a fresh process
        starts from a fresh view). Either way the leadership is given up before this returns, so a
        standby takes over at once."""
        self._stop = stop
        self._supervisor = Supervisor(stop, wake=lambda: self._inbox.put(("wake", None)))
        for kind, follower in self._followers.items():
            self._supervisor.follow(f"follow-{kind}", follower, functools.partial(self._enqueue, kind))
        self._supervisor.loop("election", self._lead)
        try:
            self._supervisor.keep_going("loop", self._turn)
        finally:
            self._shut_down()

    @property
    def failure(self) -> str | None:
        """Why the scheduler stopped by itself (None: it was stopped, or still runs)."""
        return self._supervisor.failure if self._supervisor else None

    def _turn(self) -> None:
        """Take in what the followers brought; while leading, run a cycle. (`keep_going` tells
        whatever this raises and goes on with the next turn.)"""
        changed = self._drain(timeout=self._settings.scheduler_cadence)
        metrics.LEADER.set(self.election.is_leader)
        if len(self._ready) < len(self._followers) or not self.election.is_leader:
            # What this process fenced or tried was for its own tenure: a leader again later
            # fences afresh (fencing is idempotent) rather than trust what another may have undone.
            self._fencing.clear()
            return
        try:
            sentence = self.run_cycle()
        except GuardFailed:
            log.warning("%s lost the leadership during a cycle; its writes were refused", self.candidate)
            return
        except StoreUnavailable as exc:
            log.warning("cycle skipped: %s", exc)
            self._stop.wait(1.0)
            return
        except LeaseExpired as exc:  # the events' shared lease was revoked: the next cycle takes the new one
            log.warning("cycle skipped: %s", exc)
            event_leases(self._store).forget(self._store)
            return
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

    def _enqueue(self, kind: str, item: Any) -> None:
        self._inbox.put((kind, item))

    def _lead(self) -> None:
        """One tenure: campaign until leading, then lead until deposed (or stopped)."""
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
            fold = self._folds.get(kind)
            if fold is None:  # a wake-up
                continue
            # One item that cannot be folded (a bug meeting an odd record) is told and skipped;
            # the others are still taken in, and the follower's resync brings it again.
            with self._fold_failures.caught(f"{kind} {getattr(item, 'name', 'snapshot')}"):
                fold(self.view, item)
                if isinstance(item, Snapshot):
                    self._ready.add(kind)
        return True

    # -- one cycle --------------------------------------------------------------------------------

    def run_cycle(self) -> str:
        """Decide on the view as it is now, carry the decisions out, and say what they were.
        Raises GuardFailed if this process is not (or no longer) the leader: nothing is written."""
        metrics.PENDING.set(len(self.view.pending))
        with metrics.CYCLE_SECONDS.time():
            plan = plan_cycle(self.view, self.fencing(), self._settings, clock.monotonic(), self._rng)
            self.apply(plan)
        metrics.planned(plan)
        return plan.sentence()

    def fencing(self) -> dict[str, Fencing]:
        """What this scheduler knows of its fences, per host name, as of now."""
        return {name: _observed(book, future) for name, (book, future) in self._fencing.items()}

    def apply(self, plan: Plan) -> None:
        """Carry `plan` out: etcd writes guarded by the leadership, VMs in batches of compare-and-swap
        (a VM that changed since the plan saw it is left to the next cycle); then the fences start.
        Raises GuardFailed once the leadership is lost, StoreUnavailable if etcd cannot be reached:
        what was written stays written, and the next plan decides again on what is."""
        guard = self.election.guard
        for name in plan.down:
            self._store.update(HOSTS, name, lambda h: h.evolve(status=HostStatus.DOWN, down_since=utcnow(),
                                                                fenced=False) if h.status is HostStatus.UP else None,
                               guard=guard)
            log.warning("host %s is DOWN: its lease expired", name)
        self._commit(plan.killed)
        for done in plan.fenced:
            self._take_in(done)
        self._commit(plan.released)
        for failure in plan.fence_failures:
            log.error("fencing host %s failed: %s", failure.host, failure.reason)
            book = self._book(failure.host, failure.outage)
            self._fencing[failure.host] = (replace(book, failed_at=failure.at), None)
        self._commit(plan.noted)
        for name in plan.forgotten:
            self._fencing.pop(name, None)
        for name in plan.unfenced:
            self._store.update(HOSTS, name, lambda h: h.evolve(fenced=False, down_since=None), guard=guard)
        self._commit_resizes(plan.resized)
        self._commit(plan.not_resized)
        metrics.PLACEMENTS.inc(self._commit(plan.placed))
        self._commit(plan.refused)
        self._commit(plan.moves)
        self._commit(plan.unmovable)
        for name, blocked in plan.blocked:
            self._store.update(HOSTS, name, lambda h, why=dict(blocked): h.evolve(drain_blocked=why)
                               if h.drain and h.drain_blocked != why else None, guard=guard)
        for start in plan.fences:
            self._start_fence(start)
        if plan.released:
            self._inbox.put(("wake", None))  # place the released VMs now, not one cadence later

    def _book(self, host: str, outage: datetime | None) -> Fencing:
        book, _ = self._fencing.get(host, (None, None))
        return book if book is not None and book.outage == outage else Fencing(outage)

    def _take_in(self, done: FenceDone) -> None:
        book = self._book(done.host, done.outage)
        self._fencing[done.host] = (replace(book, fenced=book.fenced | done.uuids), None)
        self._store.update(HOSTS, done.host, lambda h: h.evolve(fenced=True)
                           if h.status is HostStatus.DOWN and h.down_since == done.outage else None,
                           guard=self.election.guard)
        log.info("host %s is fenced", done.host)

    def _start_fence(self, start: FenceStart) -> None:
        """Fence the host in the pool; a fence of an earlier outage still running is forgotten (it
        says nothing about this one). The next cycle after it finishes takes the result in."""
        host = start.host
        log.info("fencing host %s", host.name)
        future = self._fence_pool.submit(self._fence_current, host, list(start.uuids))
        future.add_done_callback(lambda _: self._inbox.put(("wake", None)))
        self._fencing[host.name] = (self._book(host.name, host.down_since), future)

    def _fence_current(self, host: Host, uuids: list[str]) -> frozenset[str]:
        """Fence `host` for those of the VMs that etcd says are still KILLED on it (the view may lag
        behind, e.g. just after a leader change: a VM already moved on must never be fenced, as
        that would cut off its healthy new QEMU); return the uuids fenced."""
        current = [found.value for found in (self._store.get(VMS, uuid) for uuid in uuids)
                   if found is not None and found.value.host == host.name and found.value.status is Status.KILLED]
        self._fence.fence(host, current)
        return frozenset(vm.uuid for vm in current)

    # -- writing ----------------------------------------------------------------------------------

    def _commit(self, writes: tuple[VMWrite, ...]) -> int:
        """Write VMs in batches, each compared with the revision its decision saw; a VM that changed
        meanwhile is left out (the next cycle decides again on its new state). A write that changes
        nothing (a refusal or a fence failure already told) is skipped: the event log would repeat it
        every cycle. Returns how many VMs were written."""
        guard = self.election.guard
        written = 0
        decisions = [(w.seen, w.seen.value.evolve(**w.changes), w.message) for w in writes if w.changes_anything]
        for start in range(0, len(decisions), BATCH):
            batch = {vm.name: (vm, new, message) for vm, new, message in decisions[start:start + BATCH]}
            while batch:
                puts: list[Put[Any]] = []
                for vm, new, message in batch.values():
                    puts += [Put(VMS, vm.name, new, vm.mod_revision),
                             new_event(self._store, ref(Kind.VM, vm.name), self._source, message, request_id=new.request_id)]
                try:
                    revision = self._store.transact(puts, guard=guard)
                except Conflict as exc:
                    stale = VMS.name_of(exc.key) if exc.key.startswith(VMS.prefix) else None
                    if stale is None or stale not in batch:
                        raise
                    log.debug("vm=%s changed under a decision; deciding again next cycle", stale)
                    del batch[stale]
                    continue
                for vm, new, message in batch.values():
                    self.view.set_vm(Versioned(vm.name, new, revision, vm.create_revision))
                    with acting_for(new.request_id):  # the API request that last asked something of the VM
                        log.info("vm=%s %s", vm.name, message)
                written += len(batch)
                break
        return written


    def _commit_resizes(self, writes: tuple[VMWrite, ...]) -> None:
        """Write the resizes its host has room for, each with its owner's usage in the same transaction
        (a resize changes what the VM counts against the quotas): one that would pass a quota is
        refused with that reason instead. The API checked the quota when it took the resize; this
        check is the one that holds against concurrent creations."""
        for write in writes:
            vm, new = write.seen, write.seen.value.evolve(**write.changes)
            for _ in range(self._settings.cas_attempts):
                try:
                    usage = charged(self._store, new.owner, change(vm.value, new))
                except QuotaExceeded as exc:
                    self._commit((refused_resize(vm, str(exc)),))
                    break
                try:
                    revision = self._store.transact([
                        Put(VMS, vm.name, new, vm.mod_revision), usage,
                        new_event(self._store, ref(Kind.VM, vm.name), self._source, write.message,
                                  request_id=new.request_id)], guard=self.election.guard)
                except Conflict as exc:
                    if exc.key == VMS.key(vm.name):
                        break  # the VM changed under the decision: decided again next cycle
                    continue  # the owner's usage changed: charged again
                self.view.set_vm(Versioned(vm.name, new, revision, vm.create_revision))
                with acting_for(new.request_id):
                    log.info("vm=%s %s", vm.name, write.message)
                break


def _observed(book: Fencing, future: Future[frozenset[str]] | None) -> Fencing:
    """`book` with what its fence (if any) has come to by now."""
    if future is None:
        return book
    if not future.done():
        return replace(book, running=True)
    error = future.exception()
    if error is not None:
        return replace(book, error=str(error) or type(error).__name__)
    return replace(book, result=future.result())
