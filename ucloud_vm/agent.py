"""The host agent: registers its host, keeps its lease, and makes each of its VMs what was asked.

A reconcile loop: follow `/v1/vm/` (list, watch, relist), and for every VM placed on this host, or
with files left here, `reconcile` reads the record, observes the VM's process through the
hypervisor driver, lets the pure `decide` (ucloud_vm/decide.py: start here) choose one step,
records it with compare-and-swap and acts. Each QEMU says itself when something happens (its QMP
events, ucloud_vm.qmp_events), which wakes its VM's worker: a crash becomes KILLED at once, then a
restart with backoff, then ERROR if it keeps dying. A monitor looks each `monitor_interval` at the
running VMs whose events cannot be followed, and at every one each `monitor_sweep_interval`.
QEMU processes outlive the agent: a restarted agent re-adopts them and restarts none of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from ucloud_common.config import Settings
from ucloud_common.allocation import SHARED_STORAGE
from ucloud_common.claim import held_by, vm_claims
from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_common.event import Event, Kind, event_leases, new_event, ref
from ucloud_common.failures import Failures
from ucloud_common.logs import acting_for, current_request_id
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive, HostStatus
from ucloud_common.network import detached
from ucloud_common.quota import change, transact_counted
from ucloud_common.record import utcnow
from ucloud_common.specs import Specs
from ucloud_common.states import (MigrationPhase, Party, Requested, Status, Writer, check_migration_step,
                                  check_transition)
from ucloud_common.store import (
    AbstractStore,
    Change,
    Conflict,
    Follower,
    Guard,
    GuardFailed,
    KeptLease,
    LeaseExpired,
    NotFound,
    Put,
    Remove,
    Snapshot,
    StoreError,
    StoreUnavailable,
    Versioned,
)
from ucloud_common.supervise import Supervisor
from ucloud_common.vm import VMS, VM, Migration
from ucloud_common.vmstats import VM_STATS, Usage, VMStats
from ucloud_common.leftover import LEFTOVERS, leftover_name, leftovers_of
from ucloud_common.cidata import hostname_for, seed_files
from ucloud_vm import metrics
from ucloud_vm.decide import Act, Seen, Step, decide, decide_incoming
from ucloud_vm.driver import LIVE, Hypervisor, RunState
from ucloud_vm.peerimages import PeerImages
from ucloud_vm.storage import StorageBackend, StorageError
from ucloud_vm.vmnet import VMNetworks
from ucloud_vm.workers import KeyedWorkers

log = logging.getLogger(__name__)

# The monitor looks at these; the others wait for a change of their record or their own look_again.
MONITORED = frozenset({Status.RUNNING, Status.SUSPENDED, Status.STOPPING})


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    capacity: Specs


class Agent:
    def __init__(self, store: AbstractStore, settings: Settings, host: HostSpec, driver: Hypervisor,
                 storage: dict[str, StorageBackend], networks: VMNetworks | None = None,
                 images: PeerImages | None = None) -> None:
        """`networks`: this host's share of the VM networks; None where no underlay is configured
        (a VM's networks are then records only: its QEMU gets no NIC). `images`: the local image
        store as the other hosts see it (reported on the host record, missing images fetched before
        a local disk is made); None: the host record says nothing of images (counted as holding all)."""
        self._store = store
        self._settings = settings
        self.host = host
        self._driver = driver
        self._storage = storage
        self._networks = networks
        self._images = images
        self._reported_images: tuple[str, ...] | None = None  # as last written on the host record
        self._source = f"agent {host.name}"
        self._agent_id = uuidlib.uuid4().hex
        self._lease: KeptLease | None = None
        self._registering = False  # a thread registers again after a lost lease
        self._mine: dict[str, VM] = {}  # the VMs placed here, as last seen
        self._lock = threading.Lock()
        self._workers = KeyedWorkers(lambda uuid: self.reconcile(uuid).look_again, threads=settings.agent_workers)
        self._next_sweep = 0.0  # (time.monotonic) the monitor's next look at every process
        self._stop = threading.Event()
        self._supervisor = Supervisor(self._stop)
        self.usage: dict[str, Usage] = {}  # the last sample of each VM whose QEMU runs here
        self._published: dict[str, int] = {}  # uuid → the mod_revision of the figures this agent last wrote
        self.collector = metrics.AgentCollector(self._vms, lambda: self.usage)

    # -- the process ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set. Its threads (following the VMs, the monitor, the host check)
        go on whatever one turn raises (`Supervisor.loop`/`follow`); should one end anyway,
        `failure` says which and why, and the caller must exit non-zero (a restarted
        agent lists everything afresh and re-adopts its QEMUs), and the host's lease is revoked
        first: an agent never keeps its host alive while it cannot see. Stopped on purpose, it
        leaves its lease to expire: an agent restarted within the TTL (an upgrade, `systemctl
        restart`) takes over its host without the host ever being DOWN and its VMs moved."""
        self._stop = stop
        self._supervisor = Supervisor(stop)
        with self._lock:
            self._registering = True  # a lease lost meanwhile is this thread's to replace
        self._register_again()
        follower = Follower(self._store, VMS, resync_interval=self._settings.resync_interval)
        # Each duty its own loop: a host check that fails (a garbage host record) never delays a
        # look at the VMs, whose crashes the monitor must notice within a second.
        self._supervisor.loop("monitor", self.monitor_tick, every=self._settings.monitor_interval)
        self._supervisor.loop("host-check", self.check_host, every=self._settings.host_check_interval,
                              expected=(StoreUnavailable,))
        self._supervisor.follow("follow-vm", follower, self._fold)
        if self._images is not None:
            self._supervisor.loop("image-cleanup", self.remove_deleted_images, every=self._settings.resync_interval,
                                  expected=(StoreUnavailable,))
        if self._settings.vm_stats_interval:
            self._supervisor.loop("vm-stats", self.sample_usage, every=self._settings.vm_stats_interval,
                                  expected=(StoreUnavailable,))
        try:
            stop.wait()
        finally:
            follower.stop()
            self._supervisor.join(self._settings.etcd_timeout + 1.0)
            self._workers.close()
            if self._lease is not None:
                self._lease.close(revoke=self.failure is not None)

    @property
    def failure(self) -> str | None:
        """Why the agent stopped by itself (None: it was stopped, or still runs)."""
        return self._supervisor.failure

    def _register(self) -> None:
        """Liveness key on a fresh lease first, then the record UP: the scheduler never sees an UP
        host without a liveness key and declares it dead. Tried until it succeeds: etcd may be
        away, a lease may expire meanwhile, the host record may not validate."""
        failures = Failures(f"registering host {self.host.name}", (StoreError,))
        while not self._stop.is_set():
            with failures.caught():
                if self._lease is not None:
                    self._lease.close(revoke=False)
                self._lease = KeptLease(self._store, self._settings.host_lease_ttl, self._settings.heartbeat_interval,
                                        on_lost=self._reregister)
                self.announce(self._lease.id)
                log.info("host %s registered (lease %x, accelerator %s)", self.host.name, self._lease.id,
                         self._driver.accel)
                return
            self._stop.wait(2.0)

    def announce(self, lease: int) -> None:
        """Say this host is alive (its liveness key, on `lease`) and then UP, in that order."""
        self._store.transact([Put(HOSTS_ALIVE, self.host.name, HostAlive(agent_id=self._agent_id), None,
                                  lease=lease)])
        self._store_host_up()

    def _reregister(self) -> None:
        """A lease was lost: register again, in one thread however many leases are lost meanwhile
        (each try makes a lease, which a slow etcd may lose in turn: a thread per loss piled up
        hundreds of them, all retrying, in an agent whose etcd had gone)."""
        with self._lock:
            if self._registering:
                return  # that thread makes a new lease anyway, and looks again after
            self._registering = True
        log.error("host %s lost its lease; registering again (its VMs keep running)", self.host.name)
        threading.Thread(target=self._register_again, name="register", daemon=True).start()

    def _register_again(self) -> None:
        while True:
            self._register()
            with self._lock:
                # A loss told while this thread was at work was not acted on: it is seen here.
                if self._stop.is_set() or self._lease is None or not self._lease.lost.is_set():
                    self._registering = False
                    return

    def check_host(self) -> None:
        """A host declared DOWN while its agent still holds its lease (the scheduler judged it dead
        during a partition, say) says UP again; VMs moved away meanwhile name their new host, and
        this agent lets them go. And the VM networks' peers, which come and go with the other
        hosts' VMs, are refreshed."""
        host = self._store.get(HOSTS, self.host.name)
        if host is not None and host.value.status is HostStatus.DOWN and self._lease and not self._lease.lost.is_set():
            log.warning("host %s is recorded DOWN while its agent runs; saying UP again", self.host.name)
            self._store_host_up()
        if self._networks:
            self._networks.refresh()
        self._report_images()

    def _deleted_while_down(self) -> set[str]:
        """The VMs the API deleted while this host was down (`_let_go` removes them here): a disk
        alone is no process or file that `leftovers` would find. None known if etcd does not answer:
        the next listing (a resync) asks again."""
        try:
            listing = self._store.list(LEFTOVERS, within=leftovers_of(self.host.name))
        except StoreError as exc:
            log.warning("host %s: VMs deleted while it was down not known yet: %s", self.host.name, exc)
            return set()
        return {leftover.value.vm.uuid for leftover in listing.items.values()}

    def remove_deleted_images(self) -> None:
        """Free the local store of images deleted through the API, but those a VM placed here is
        made from (its disk is an overlay on the image's file)."""
        if self._images is None:
            return
        with self._lock:
            in_use = {vm.image for vm in self._mine.values()}
        if self._images.remove_deleted(in_use):
            self._report_images()

    def _report_images(self) -> None:
        """Write the local store's images on the host record when they changed (a fetch, an import,
        image-scanner beside this agent, a deletion): what the scheduler places local disks by."""
        if self._images is None or (held := self._images.held()) == self._reported_images:
            return
        self._store.update(HOSTS, self.host.name, lambda h: h.evolve(images=held) if h.images != held else None)
        self._reported_images = held

    def _host_fenced(self) -> bool:
        """Whether the scheduler recorded this host fenced (for its last outage); unknown counts as
        fenced, which costs a restart rather than adopting a QEMU cut off from its disk."""
        try:
            host = self._store.get(HOSTS, self.host.name)
        except (StoreError, ValueError):
            return True
        return host is not None and host.value.fenced

    def _store_host_up(self) -> None:
        backends = tuple(sorted(self._storage))
        hdd = tuple(name for name in backends if self._storage[name].offers_hdd)
        images = {"images": self._images.held(), "image_url": self._images.url} if self._images else {}
        try:
            self._store.update(HOSTS, self.host.name, lambda h: h.evolve(
                status=HostStatus.UP, address=self.host.address, capacity=self.host.capacity,
                storage_backends=backends, hdd_backends=hdd, down_since=None, router=self._settings.router,
                **images))
        except NotFound:
            self._store.create(HOSTS, self.host.name, Host(
                name=self.host.name, address=self.host.address, capacity=self.host.capacity,
                storage_backends=backends, hdd_backends=hdd, router=self._settings.router, **images))
        self._reported_images = images.get("images")

    def _concerns(self, vm: VM) -> bool:
        """Placed here, or migrating here."""
        return vm.host == self.host.name or (vm.migration is not None and vm.migration.target == self.host.name)

    def _fold(self, item: Snapshot[VM] | Change[VM]) -> None:
        if isinstance(item, Snapshot):
            with self._lock:
                self._mine = {u: v.value for u, v in item.items.items() if v.value.host == self.host.name}
            leftovers = self._driver.leftovers()
            incoming = {u for u, v in item.items.items() if self._concerns(v.value)}
            keys = set(self._mine) | leftovers | incoming | self._deleted_while_down()
            log.info("host %s: %d VMs placed here, %d with files here", self.host.name, len(self._mine),
                     len(leftovers))
            for uuid in keys:
                self._workers.submit(uuid)
            return
        with self._lock:
            was_mine = item.name in self._mine
            if item.value is not None and item.value.value.host == self.host.name:
                self._mine[item.name] = item.value.value
            else:
                self._mine.pop(item.name, None)
        if (was_mine or item.name in self._mine or item.name in self._driver.leftovers()
                or (item.value is not None and self._concerns(item.value.value))):
            self._workers.submit(item.name)

    def monitor_tick(self) -> None:
        """Wake the worker of each VM whose decision, on what its process shows now, would change
        something (a crash, a guest that powered off or paused by itself). A process whose events
        are followed wakes its worker itself, and is looked at only each sweep."""
        with self._lock:
            mine = [vm for vm in self._mine.values() if vm.status in MONITORED]
        now = utcnow()
        sweep = time.monotonic() >= self._next_sweep
        if sweep:
            self._next_sweep = time.monotonic() + self._settings.monitor_sweep_interval
        for vm in mine:
            if self._driver.follow(vm.uuid, self._workers.submit) and not sweep:
                continue
            step = decide(vm, Seen(self._driver.observe(vm.uuid), networked=self._networks is not None), now,
                          self._settings)
            if step.writes() or step.act is not Act.NOTHING:
                self._workers.submit(vm.uuid)

    def _vms(self) -> list[VM]:
        with self._lock:
            return list(self._mine.values())

    def sample_usage(self) -> None:
        """Measure each VM whose QEMU should run here, keep the figures for /metrics, and publish them
        in etcd on the host's lease (one writer: this agent, for the VMs placed here; its own records
        of VMs that left are removed by compare-and-swap, so a new host's records are never touched)."""
        usage: dict[str, Usage] = {}
        for vm in self._vms():
            if vm.status not in MONITORED:
                continue
            try:
                found = self._driver.usage(vm.uuid)
            except TemporaryError as exc:  # a QEMU that does not answer: the monitor handles it
                log.debug("vm=%s: no figures this time: %s", vm.uuid, exc)
                continue
            if found is not None:
                usage[vm.uuid] = found
        self.usage = usage
        lease = self._lease
        if lease is None or lease.lost.is_set():
            return
        sampled = utcnow()
        records = [Put(VM_STATS, uuid, VMStats(vm=uuid, host=self.host.name, sampled_at=sampled, usage=used), None,
                       lease=lease.id) for uuid, used in usage.items()]
        for start in range(0, len(records), _STATS_PER_TRANSACTION):
            batch = records[start:start + _STATS_PER_TRANSACTION]
            revision = self._store.transact(list(batch))
            self._published.update((put.name, revision) for put in batch)
        for uuid in set(self._published) - set(usage):
            try:
                self._store.delete(VM_STATS, uuid, mod_revision=self._published[uuid])
            except Conflict:
                pass  # written since by the agent of the host the VM moved to: its record now
            del self._published[uuid]

    # -- reconciling one VM -----------------------------------------------------------------------

    def reconcile(self, uuid: str) -> Step:
        """Read the VM, observe its process, decide, record the step (compare-and-swap), act.
        Returns the step taken; its `look_again` says when to look again."""
        with metrics.RECONCILE_SECONDS.time():
            return self._reconcile_or_later(uuid)

    def _reconcile_or_later(self, uuid: str) -> Step:
        try:
            return self._reconcile(uuid)
        except LeaseExpired as exc:  # the events' shared lease was revoked: take the new one next time
            event_leases(self._store).forget(self._store)
            return self._later(uuid, str(exc), self._settings.store_retry)
        except (StoreUnavailable, Conflict) as exc:
            # Temporary: etcd is away or other writers kept winning. Every step is recorded by
            # compare-and-swap and decided afresh, so looking again soon is safe; no traceback.
            return self._later(uuid, str(exc), self._settings.store_retry)
        except TemporaryError as exc:  # a QEMU or a Ceph that did not answer
            return self._later(uuid, exc.reason, exc.delay)
        except Exception:  # a bug: told once with its traceback, tried again much later, never hot
            log.exception("vm=%s: reconcile failed unexpectedly; looking again in %.0f s", uuid,
                          self._settings.failure_retry)
            return Step(note="failed unexpectedly", look_again=self._settings.failure_retry)

    def _reconcile(self, uuid: str) -> Step:
        current = self._store.get(VMS, uuid)
        # What is logged and told from here on names the API request that last asked something of the VM.
        with acting_for(current.value.request_id if current else ""):
            return self._reconcile_read(uuid, current)

    def _reconcile_read(self, uuid: str, current: Versioned[VM] | None) -> Step:
        if current is not None and current.value.host != self.host.name and current.value.migration is not None \
                and current.value.migration.target == self.host.name:
            return self._receive(current, current.value.migration)
        if current is None or current.value.host != self.host.name:
            return self._let_go(uuid, current)
        step = decide(current.value, self._observe(current.value), utcnow(), self._settings)
        # The event goes with the record (a reader who sees the status sees why) unless the act
        # may still fail for good: then it is told once the act succeeded, or the failure instead.
        with_record = (bool(step.event) and step.writes() and step.act not in _PERMANENT_WHEN_FAILED
                       and not step.confirm)
        if step.writes():
            try:
                current = self._record(current, step, step.event if with_record else "")
            except Conflict:  # the VM changed since it was read: never act on a stale decision
                return Step(note="changed meanwhile; deciding again", look_again=0)
        try:
            failed_nics = self._act(current.value, step)
        except PermanentError as exc:
            if step.act is Act.PLUG:  # the VM runs on without this NIC; it is tried again at its next start
                failed_nics = {step.nic: exc.reason}
                step = replace(step, event=f"NIC {step.nic} not attached: {exc.reason}")
            elif step.act in _PERMANENT_WHEN_FAILED:
                return self._failed(current, step, exc)
            else:
                raise
        except TemporaryError as exc:
            if step.act is Act.START:  # not a crash: the next look starts it again after the delay, the reason shown
                self._record(current, Step(fields={"deadline": utcnow() + timedelta(seconds=exc.delay),
                                                   "error": exc.reason}))
            raise
        if failed_nics:
            current = self._record(current, Step(fields={"nic_errors": {**current.value.nic_errors, **failed_nics}}))
            if step.act is Act.START:
                step = replace(step, event=step.event + "".join(f"; without NIC {mac}: {reason}"
                                                                for mac, reason in failed_nics.items()))
        if step.confirm:
            self._record(current, Step(fields=step.confirm), step.event)
        elif step.event and not with_record:
            self._event(uuid, step.event, current.create_revision)
        if step.event:
            log.info("vm=%s %s", uuid, step.event)
        elif step.note:
            log.debug("vm=%s %s", uuid, step.note)
        return step

    def _observe(self, vm: VM) -> Seen:
        run = self._driver.observe(vm.uuid)
        if run.state not in (RunState.ABSENT, RunState.UNRESPONSIVE):
            # From now on its QEMU says itself when something happens (the monitor's sweep asks too).
            self._driver.follow(vm.uuid, self._workers.submit)
        # Only where it decides anything (it costs a read of the host record).
        fenced = (vm.status is Status.KILLED and vm.storage in SHARED_STORAGE and run.state in LIVE
                  and self._host_fenced())
        sends = (vm.migration is not None and vm.migration.phase is MigrationPhase.RUNNING
                 and run.state not in (RunState.ABSENT, RunState.UNRESPONSIVE))
        return Seen(run, fenced, networked=self._networks is not None,
                    migration=self._driver.migration(vm.uuid) if sends else None)

    def _receive(self, current: Versioned[VM], migration: Migration) -> Step:
        """The target's side of a migration: decide, act, and record where the process listens (or
        why it cannot)."""
        vm = current.value
        step = decide_incoming(vm, migration, Seen(self._driver.observe(vm.uuid)))
        if step.writes():
            self._record(current, step)
        if step.act is Act.RECEIVE:
            try:
                address = self._listen(vm)
            except (PermanentError, StorageError) as exc:
                check_migration_step(Party.TARGET, migration.phase, MigrationPhase.FAILED)
                self._driver.kill(vm.uuid)
                failed = migration.model_copy(update={"phase": MigrationPhase.FAILED, "error": str(exc)})
                self._record(current, Step(fields={"migration": failed}))
                log.warning("vm=%s cannot receive its migration from %s: %s", vm.uuid, migration.source, exc)
                return Step(note=str(exc))
            check_migration_step(Party.TARGET, migration.phase, MigrationPhase.LISTENING)
            backend = self._storage[vm.storage]
            ready = migration.model_copy(update={
                "phase": MigrationPhase.LISTENING, "address": address,
                "target_clients": tuple(c for c in backend.clients(vm) if c not in vm.disk_clients)})
            try:
                self._record(current, Step(fields={"migration": ready}))
            except Conflict:  # the migration changed meanwhile (ended?): decided again, the process stopped then
                return Step(note="changed meanwhile; deciding again", look_again=0)
            log.info("vm=%s receiving it from %s at %s", vm.uuid, migration.source, address)
        elif step.act is Act.KILL:
            self._driver.kill(vm.uuid)
        return step

    def _listen(self, vm: VM) -> str:
        backend = self._storage.get(vm.storage)
        if backend is None:
            raise StorageError(f"this host has no {vm.storage} storage")
        nics, failed = self._networks.plug(vm) if self._networks else ({}, {})
        if failed:  # the guest's devices must be the same on both sides
            raise StorageError("cannot give it its NICs here: " + "; ".join(f"{m}: {r}" for m, r in failed.items()))
        return self._driver.receive(vm, backend.drive(vm), seed=seed_files(vm, hostname_for(vm.name), vm.networks),
                                    nics=nics, address=self.host.address, hdd=backend.hdd_drive(vm))

    def _act(self, vm: VM, step: Step) -> dict[str, str]:
        """Carry out `step`; return the NICs (MAC → reason) the VM could not be given."""
        if step.act in (Act.CREATE_DISK, Act.START):
            backend = self._storage.get(vm.storage)
            if backend is None:
                raise StorageError(f"this host has no {vm.storage} storage")
            if (self._images is not None and vm.storage not in SHARED_STORAGE and not backend.exists(vm)
                    and self._images.ensure(vm.image)):
                self._report_images()  # fetched: the scheduler may send the image's next VMs here
            backend.create(vm)
            if step.act is Act.START:
                # A VM requested SUSPENDED starts with its CPUs stopped: its guest never runs a cycle.
                nics, failed = self._networks.plug(vm) if self._networks else ({}, {})
                started = time.perf_counter()
                self._driver.start(vm, backend.drive(vm), paused=vm.requested is Requested.SUSPENDED,
                                   seed=seed_files(vm, hostname_for(vm.name), vm.networks), nics=nics,
                                   hdd=backend.hdd_drive(vm))
                metrics.QEMU_START_SECONDS.observe(time.perf_counter() - started)
                if step.fields.get("restarts"):
                    metrics.RESTARTS.inc()
                return failed
        elif step.act is Act.DELETE:
            self._delete(vm)
        elif step.act is Act.PLUG and self._networks:
            self._driver.plug(vm, step.nic, self._networks.plug_nic(vm, step.nic))
        elif step.act is Act.UNPLUG and self._networks:
            self._driver.unplug(vm.uuid, step.nic)
            self._networks.unplug_nic(step.nic)
        elif step.act is Act.SEND and vm.migration is not None:
            self._driver.send(vm.uuid, vm.migration.address, self._settings.migration_downtime_ms,
                              self._settings.migration_bandwidth_mib)
        elif step.act is not Act.NOTHING:
            {Act.CANCEL_MIGRATION: self._driver.cancel_migration, Act.PAUSE: self._driver.pause, Act.RESUME: self._driver.resume, Act.RESET: self._driver.reset,
             Act.POWERDOWN: self._driver.powerdown, Act.KILL: self._driver.kill}[step.act](vm.uuid)
        return {}

    def _failed(self, current: Versioned[VM], step: Step, exc: Exception) -> Step:
        """A start, a disk or a deletion failed for good: ERROR with the reason (a deletion is
        tried again after `failure_retry`)."""
        if step.act is Act.DELETE:
            reason, fields = f"delete failed: {exc}", {"deadline": utcnow() + timedelta(seconds=self._settings.failure_retry)}
        else:
            reason = f"disk: {exc}" if isinstance(exc, StorageError) else str(exc)
            fields = {"observed_generation": current.value.generation}
        failed = Step(status=Status.ERROR, fields={"error": reason, **fields}, event=reason,
                      look_again=self._settings.failure_retry if step.act is Act.DELETE else None)
        self._record(current, failed, reason)
        log.warning("vm=%s %s", current.name, reason)
        return failed

    def _later(self, uuid: str, why: str, delay: float) -> Step:
        log.warning("vm=%s: %s; looking again in %.0f s", uuid, why, delay)
        return Step(note=why, look_again=delay)

    def _let_go(self, uuid: str, current: Versioned[VM] | None) -> Step:
        """A VM with files here that is no longer this host's: stop its process, keep its disk (it
        may be shared and in use elsewhere now) — unless the API deleted it while this host was
        down and left it to this agent (`ucloud_common.leftover`): then everything of it goes."""
        leftover = self._store.get(LEFTOVERS, leftover_name(self.host.name, uuid)) if current is None else None
        if leftover is not None:
            self._remove_here(leftover.value.vm)
            self._store.delete(LEFTOVERS, leftover.name, mod_revision=leftover.mod_revision)
            log.warning("vm=%s was deleted while host %s was down: its process, NICs, disk and files here are "
                        "removed", uuid, self.host.name)
            return Step(Act.KILL, note="deleted while this host was down: removed here")
        note = "not placed here"
        if self._driver.observe(uuid).state is not RunState.ABSENT:
            where = current.value.host if current else "nowhere (its record is gone)"
            note = f"stopped on {self.host.name}: the VM is placed on {where or 'no host'}"
            log.warning("vm=%s runs here but is placed on %s: stopping its QEMU", uuid, where or "no host")
            self._driver.kill(uuid)
            if current is not None:
                self._event(uuid, note, current.create_revision)
                if self._networks:
                    self._networks.unplug(current.value)
            self._driver.forget(uuid)
            return Step(Act.KILL, event=note)
        self._driver.forget(uuid)
        return Step(note=note)

    def _remove_here(self, vm: VM) -> None:
        """Stop the VM's process and remove its NICs, disk and files from this host. Idempotent."""
        self._driver.kill(vm.uuid)
        if self._networks:
            self._networks.unplug(vm)
        backend = self._storage.get(vm.storage)
        if backend is not None:
            backend.delete(vm)
        self._driver.forget(vm.uuid)

    def _delete(self, vm: VM) -> None:
        self._remove_here(vm)

        def removal() -> tuple[list[Put[Any] | Remove[Any]], dict[str, float]] | None:
            latest = self._store.get(VMS, vm.uuid)
            if latest is None:
                return None
            # Its resources are released with its record, and only then: its owner cannot create more
            # while this host still holds its disk.
            return [Remove(VMS, vm.uuid, latest.mod_revision),
                    *held_by(self._store, vm.uuid, vm_claims(latest.value)),
                    *detached(self._store, vm.uuid, (nic.network for nic in latest.value.networks))], \
                change(latest.value, None)

        # Conflict (the VM kept changing) propagates: decided again shortly, the deletion is idempotent.
        transact_counted(self._store, vm.owner, removal)
        with self._lock:
            self._mine.pop(vm.uuid, None)
        log.info("vm=%s deleted: no process, file or key left", vm.uuid)

    # -- writing ----------------------------------------------------------------------------------

    def _record(self, current: Versioned[VM], step: Step, event: str = "") -> Versioned[VM]:
        """Write the step's status and fields (and `event`, in the same transaction) by
        compare-and-swap on `current`, the record the step was decided on: `Conflict` if it
        changed meanwhile (never re-applied to a newer one, which deserves its own decision)."""
        vm = current.value
        fields = dict(step.fields)
        if step.disk_clients:
            backend = self._storage.get(vm.storage)
            fields["disk_clients"] = (backend.clients(vm) if backend else ()) or vm.disk_clients
        status = step.status or vm.status
        check_transition(Writer.AGENT, vm.status, status)
        new = vm.evolve(status=status, **fields)
        revision = self._store.transact([Put(VMS, vm.uuid, new, current.mod_revision),
                                         *([self._told(vm.uuid, event)] if event else [])])
        with self._lock:
            if vm.uuid in self._mine:
                self._mine[vm.uuid] = new
        return Versioned(vm.uuid, new, revision, current.create_revision)

    def _event(self, uuid: str, message: str, vm_created: int) -> None:
        """Tell the VM's event log, only while the VM (created at revision `vm_created`) exists: an
        event written after its deletion would tell of work on a VM that is gone."""
        try:
            self._store.transact([self._told(uuid, message)], guard=Guard(VMS.key(uuid), vm_created))
        except GuardFailed:
            log.debug("vm=%s is gone; event not recorded: %s", uuid, message)
        except StoreUnavailable as exc:
            log.warning("vm=%s: event not recorded (%s): %s", uuid, exc, message)

    def _told(self, uuid: str, message: str) -> Put[Event]:
        """The VM's event, naming the API request that last asked something of it (`_reconcile`)."""
        return new_event(self._store, ref(Kind.VM, uuid), self._source, message, request_id=current_request_id())


# Figures per etcd transaction: etcd takes at most 128 operations in one.
_STATS_PER_TRANSACTION = 100

# Permanent failures of these actions are the VM's: it goes to ERROR with the reason. (Any other
# action failing for good is a bug: logged once, looked at again after `failure_retry`.)
_PERMANENT_WHEN_FAILED = frozenset({Act.CREATE_DISK, Act.START, Act.DELETE})


def machine_capacity(disk_dir: Path, hdd_dir: Path | None = None) -> Specs:
    """What this machine has: its CPUs and RAM, the size of the file system of `disk_dir` as ssd and
    of `hdd_dir` as hdd (none without an HDD directory)."""
    ram_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return Specs(cpu=os.cpu_count() or 1, ram=round(ram_kib / 1024**2, 1), ssd=max(1, _gib_of(disk_dir)),
                 hdd=_gib_of(hdd_dir) if hdd_dir is not None else 0)


def _gib_of(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(directory).total // 1024**3
