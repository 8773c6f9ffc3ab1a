"""The host agent: registers its host, keeps its lease, and makes each of its VMs what was asked.

A reconcile loop: follow `/v1/vm/` (list, watch, relist), and for every VM placed on this host, or
with files left here, compare what is asked (`requested`, `generation`) with what is true (the QEMU
process and its run state) and take one step towards it, writing `status` with compare-and-swap.
A monitor checks every second that each QEMU still runs (and whether its guest powered off), so a
crash becomes KILLED within a second, then a restart with backoff, then ERROR if it keeps dying.
QEMU processes outlive the agent: a restarted agent re-adopts them through their pid file and QMP
socket, and restarts none of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucloud_common.config import Settings
from ucloud_common.allocation import SHARED_STORAGE
from ucloud_common.claim import held_by, vm_claims
from ucloud_common.event import EVENTS, events_of, new_event
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive, HostStatus
from ucloud_common.record import utcnow
from ucloud_common.specs import Specs
from ucloud_common.states import Requested, Status, Writer, check_transition
from ucloud_common.store import (
    Change,
    Conflict,
    Follower,
    Guard,
    GuardFailed,
    KeptLease,
    NotFound,
    Put,
    Remove,
    Snapshot,
    Store,
    StoreError,
    StoreUnavailable,
    Versioned,
)
from ucloud_common.supervise import Supervisor
from ucloud_common.vm import VMS, VM
from ucloud_vm import qemu
from ucloud_vm.paths import VMPaths
from ucloud_vm.storage import StorageBackend, StorageError
from ucloud_vm.workers import KeyedWorkers

log = logging.getLogger(__name__)

MONITOR_S = 1.0
HOST_CHECK_TICKS = 5  # the host record is checked every 5 monitor ticks
POWERDOWN_POLL_S = 0.1
STORE_RETRY_S = 1.0
# QEMU run states that mean the guest is gone although its QEMU lives: handled as a crash.
DEAD_GUEST = {"guest-panicked": "the guest kernel panicked", "internal-error": "QEMU reported an internal error"}


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    capacity: Specs


class Agent:
    def __init__(self, store: Store, settings: Settings, host: HostSpec, run_dir: Path,
                 storage: dict[str, StorageBackend], accel: str) -> None:
        self._store = store
        self._settings = settings
        self.host = host
        self.host_key = HOSTS.key(host.name)
        self._run_dir = run_dir
        self._storage = storage
        self._accel = accel
        self._source = f"agent {host.name}"
        self._agent_id = uuidlib.uuid4().hex
        self._lease: KeptLease | None = None
        self._mine: dict[str, VM] = {}  # the VMs placed here, as last seen
        self._lock = threading.Lock()
        self._workers = KeyedWorkers(self.reconcile, threads=settings.agent_workers)
        self._stop = threading.Event()
        self._supervisor = Supervisor(self._stop)

    # -- the process ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set, or until an essential part (following the VMs, the monitor)
        ends; then `failure` says which and why, and the caller must exit non-zero (a restarted
        agent lists everything afresh and re-adopts its QEMUs), and the host's lease is revoked
        first: an agent never keeps its host alive while it cannot see. Stopped on purpose, it
        leaves its lease to expire: an agent restarted within the TTL (an upgrade, `systemctl
        restart`) takes over its host without the host ever being DOWN and its VMs moved."""
        self._stop = stop
        self._supervisor = Supervisor(stop)
        self._register()
        follower = Follower(self._store, VMS, resync_interval=self._settings.resync_interval)
        self._supervisor.start("monitor", self._monitor)
        self._supervisor.start("follow-vm", lambda: self._follow(follower))
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

    def _follow(self, follower: Follower[VM]) -> None:
        for item in follower:
            self._fold(item)

    def _register(self) -> None:
        """Liveness key on a fresh lease first, then the record UP: the scheduler never sees an UP
        host without a liveness key and declares it dead."""
        while not self._stop.is_set():
            try:
                if self._lease is not None:
                    self._lease.close(revoke=False)
                self._lease = KeptLease(self._store, self._settings.host_lease_ttl, self._settings.heartbeat_interval,
                                        on_lost=self._reregister)
                self._store.transact([Put(HOSTS_ALIVE, self.host.name, HostAlive(agent_id=self._agent_id), None,
                                          lease=self._lease.id)])
                self._store_host_up()
                log.info("host %s registered (lease %x, accelerator %s)", self.host.name, self._lease.id, self._accel)
                return
            except StoreError as exc:  # unreachable, or a lease that expired meanwhile: try afresh
                log.warning("cannot register host %s: %s; retrying", self.host.name, exc)
                self._stop.wait(2.0)
            except Exception:  # noqa: BLE001 - e.g. a host record that no longer validates: never give up silently
                log.exception("cannot register host %s; retrying", self.host.name)
                self._stop.wait(2.0)

    def _reregister(self) -> None:
        log.error("host %s lost its lease; registering again (its VMs keep running)", self.host.name)
        threading.Thread(target=self._register, name="register", daemon=True).start()

    def _ensure_up(self) -> None:
        """A host declared DOWN while its agent still holds its lease (the scheduler judged it dead
        during a partition, say) says UP again; VMs moved away meanwhile name their new host, and
        this agent lets them go."""
        try:
            host = self._store.get(HOSTS, self.host.name)
            if host is not None and host.value.status is HostStatus.DOWN and self._lease and not self._lease.lost.is_set():
                log.warning("host %s is recorded DOWN while its agent runs; saying UP again", self.host.name)
                self._store_host_up()
        except StoreUnavailable as exc:
            log.warning("host %s: cannot check its record: %s", self.host.name, exc)

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
        try:
            self._store.update(HOSTS, self.host.name, lambda h: h.evolve(
                status=HostStatus.UP, address=self.host.address, capacity=self.host.capacity,
                storage_backends=backends, down_since=None))
        except NotFound:
            self._store.create(HOSTS, self.host.name, Host(
                name=self.host.name, address=self.host.address, capacity=self.host.capacity,
                storage_backends=backends))

    def _fold(self, item: Snapshot[VM] | Change[VM]) -> None:
        if isinstance(item, Snapshot):
            with self._lock:
                self._mine = {u: v.value for u, v in item.items.items() if v.value.hostname == self.host_key}
            keys = set(self._mine) | self._local_vms()
            log.info("host %s: %d VMs placed here, %d with files here", self.host.name, len(self._mine),
                     len(self._local_vms()))
            for uuid in keys:
                self._workers.submit(uuid)
            return
        with self._lock:
            was_mine = item.name in self._mine
            if item.value is not None and item.value.value.hostname == self.host_key:
                self._mine[item.name] = item.value.value
            else:
                self._mine.pop(item.name, None)
        if was_mine or item.name in self._mine or VMPaths.of(self._run_dir, item.name).root.exists():
            self._workers.submit(item.name)

    def _local_vms(self) -> set[str]:
        directory = self._run_dir / "vms"
        return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

    def _monitor(self) -> None:
        """Every second, look at each VM that should have a QEMU here; wake its worker if what is
        true no longer matches what its record says. Now and then, make sure the host is UP. A tick
        that fails is logged and the next one goes on: this duty must not die of one bad record."""
        ticks = 0
        while not self._stop.wait(MONITOR_S):
            ticks += 1
            try:
                self._monitor_tick(ticks)
            except Exception:
                log.exception("host %s: monitoring failed this tick; going on", self.host.name)

    def _monitor_tick(self, ticks: int) -> None:
        if ticks % HOST_CHECK_TICKS == 0:
            self._ensure_up()
        with self._lock:
            mine = list(self._mine.values())
        for vm in mine:
            if vm.status not in (Status.RUNNING, Status.SUSPENDED):
                continue
            paths = VMPaths.of(self._run_dir, vm.uuid)
            if qemu.running_qemu(paths) is None:
                self._workers.submit(vm.uuid)
                continue
            try:
                state = qemu.status(paths)
            except qemu.QEMUError:
                continue
            if state == "shutdown" or state in DEAD_GUEST or (state == "running") != (vm.status is Status.RUNNING):
                self._workers.submit(vm.uuid)

    # -- reconciling one VM -----------------------------------------------------------------------

    def reconcile(self, uuid: str) -> float | None:
        """Take the VM one step (or several) towards what is asked. Returns a delay after which it
        wants to look again (a restart backoff), or None."""
        try:
            return self._reconcile(uuid)
        except (StoreUnavailable, Conflict) as exc:
            # Temporary: etcd is away or other writers kept winning. Every step is idempotent and
            # every write a compare-and-swap, so looking again soon is safe; no traceback for it.
            log.warning("vm=%s: %s; looking again in %.0f s", uuid, exc, STORE_RETRY_S)
            return STORE_RETRY_S

    def _reconcile(self, uuid: str) -> float | None:
        current = self._store.get(VMS, uuid)
        paths = VMPaths.of(self._run_dir, uuid)
        if current is None or current.value.hostname != self.host_key:
            self._let_go(uuid, current, paths)
            return None
        vm = current.value
        pid = qemu.running_qemu(paths)
        if vm.requested is Requested.DELETED:
            self._delete(current, paths)
            return None
        if pid is None:
            return self._without_qemu(vm, paths)
        return self._with_qemu(vm, paths)

    def _let_go(self, uuid: str, current: Versioned[VM] | None, paths: VMPaths) -> None:
        """A VM with files here that is no longer this host's: stop its QEMU, keep its disk (it may
        be shared and in use elsewhere now)."""
        if qemu.running_qemu(paths) is not None:
            where = current.value.hostname if current else "nowhere (its record is gone)"
            log.warning("vm=%s runs here but is placed on %s: stopping its QEMU", uuid, where)
            qemu.kill(paths)
            if current is not None:
                self._event(uuid, f"stopped on {self.host.name}: the VM is placed on {where}", current.create_revision)
        if paths.root.exists():
            shutil.rmtree(paths.root, ignore_errors=True)

    def _without_qemu(self, vm: VM, paths: VMPaths) -> float | None:
        wants_to_run = vm.requested in (Requested.RUNNING, Requested.SUSPENDED)
        new_request = vm.generation > vm.observed_generation
        if vm.status in (Status.RUNNING, Status.SUSPENDED, Status.STOPPING, Status.MIGRATING):
            if vm.status is Status.STOPPING or not wants_to_run:
                self._set(vm, Status.STOPPED, "stopped", observed_generation=vm.generation)
                return None
            return self._crashed(vm, "QEMU exited unexpectedly" + _last_line(paths.qemu_log))
        if not wants_to_run:
            if vm.status in (Status.SCHEDULED_DEPLOY, Status.KILLED, Status.ERROR, Status.STARTING):
                if vm.status is Status.SCHEDULED_DEPLOY and not self._ensure_disk(vm):
                    return None
                self._set(vm, Status.STOPPED, "stopped", observed_generation=vm.generation, error="")
            return None
        if vm.status is Status.KILLED:
            if vm.restarts >= self._settings.max_restarts:
                self._set(vm, Status.ERROR, "gave up restarting",
                          error=f"QEMU died {vm.restarts + 1} times in a row; last: {vm.error}")
                return None
            backoff = min(60.0, 2.0 ** vm.restarts) - (time.time() - vm.updated_at.timestamp())
            if backoff > 0:
                return backoff
            self._start(vm, paths, restarts=vm.restarts + 1)
            return None
        if vm.status in (Status.SCHEDULED_DEPLOY, Status.STARTING) or (
                vm.status in (Status.STOPPED, Status.ERROR) and new_request):
            self._start(vm, paths, restarts=0 if new_request else vm.restarts)
        return None

    def _with_qemu(self, vm: VM, paths: VMPaths) -> float | None:
        try:
            state = qemu.status(paths)
        except qemu.QEMUError as exc:
            log.warning("vm=%s: %s", vm.uuid, exc)
            return 2.0
        if state in DEAD_GUEST:
            qemu.kill(paths)
            if vm.status in (Status.RUNNING, Status.SUSPENDED):
                return self._crashed(vm, DEAD_GUEST[state])
            return 0.01  # never adopt a dead guest: look again, without a QEMU
        if vm.status is Status.KILLED and vm.storage in SHARED_STORAGE and self._host_fenced():
            # The scheduler fenced this host while it was thought dead: this QEMU is cut off from
            # its disk for good. Adopting it would report RUNNING a guest that can do no I/O;
            # stop it, and the next look starts the VM afresh (or lets it go if it moved).
            log.warning("vm=%s: its QEMU was fenced off its disk while the host was thought dead; restarting it",
                        vm.uuid)
            qemu.kill(paths)
            return 0.01
        if state == "shutdown":  # the guest powered itself off
            qemu.kill(paths)
            why = "stopped: the guest powered off" if vm.requested is not Requested.STOPPED else "stopped"
            self._set(vm, Status.STOPPED, why, observed_generation=vm.generation, error="")
            return None
        if vm.status in (Status.SCHEDULED_DEPLOY, Status.STARTING, Status.KILLED):
            # Its QEMU runs although the record says otherwise (the agent died while starting it,
            # or the host was only thought dead): adopt it rather than start a second one.
            if vm.status is not Status.STARTING:
                vm = self._set(vm, Status.STARTING, "")
            self._set(vm, Status.RUNNING if state == "running" else Status.SUSPENDED, "re-adopted its QEMU",
                      error="", disk_clients=vm.disk_clients or self._storage[vm.storage].clients(vm))
            return 0.01
        if vm.requested is Requested.STOPPED:
            self._shutdown(vm, paths)
        elif vm.requested is Requested.SUSPENDED and state == "running":
            qemu.execute(paths, "stop")
            self._set(vm, Status.SUSPENDED, "suspended", observed_generation=vm.generation)
        elif vm.requested is Requested.RUNNING and state != "running":
            qemu.execute(paths, "cont")
            self._set(vm, Status.RUNNING, "resumed", observed_generation=vm.generation)
        elif vm.requested is Requested.RUNNING and vm.reboot_generation > vm.observed_generation:
            qemu.execute(paths, "system_reset")
            self._set(vm, Status.RUNNING, "rebooted", observed_generation=vm.generation)
        elif vm.observed_generation != vm.generation or vm.status not in (Status.RUNNING, Status.SUSPENDED):
            self._set(vm, Status.RUNNING if state == "running" else Status.SUSPENDED, "",
                      observed_generation=vm.generation)
        return None

    # -- steps ------------------------------------------------------------------------------------

    def _crashed(self, vm: VM, reason: str) -> float:
        """KILLED with the reason; restarted after a backoff by the next look. A VM that ran stably
        since its last start begins a new count: crashes far apart are not a crash loop."""
        stable = vm.started_at is not None and (utcnow() - vm.started_at).total_seconds() >= self._settings.stable_after
        restarts = 0 if stable else vm.restarts
        self._set(vm, Status.KILLED, f"killed: {reason}", error=reason, restarts=restarts)
        return 0.01

    def _ensure_disk(self, vm: VM) -> bool:
        backend = self._storage.get(vm.storage)
        try:
            if backend is None:
                raise StorageError(f"this host has no {vm.storage} storage")
            backend.create(vm)
            return True
        except StorageError as exc:
            self._set(vm, Status.ERROR, f"disk: {exc}", error=f"disk: {exc}", observed_generation=vm.generation)
            return False

    def _start(self, vm: VM, paths: VMPaths, restarts: int) -> None:
        if not self._ensure_disk(vm):
            return
        vm = self._set(vm, Status.STARTING, "starting", restarts=restarts)
        # A VM requested SUSPENDED starts with its CPUs stopped (-S): its guest never runs a cycle.
        argv = qemu.command_line(vm, self._storage[vm.storage].drive(vm), paths, self._accel,
                                 paused=vm.requested is Requested.SUSPENDED)
        try:
            qemu.start(argv, paths)
            state = qemu.status(paths)
        except qemu.QEMUError as exc:
            self._set(vm, Status.ERROR, str(exc), error=str(exc), observed_generation=vm.generation)
            return
        self._set(vm, Status.RUNNING if state == "running" else Status.SUSPENDED,
                  f"{'restarted' if restarts else 'started'} ({self._accel})",
                  observed_generation=vm.generation, error="", started_at=utcnow(),
                  disk_clients=self._storage[vm.storage].clients(vm))

    def _shutdown(self, vm: VM, paths: VMPaths) -> None:
        """ACPI power-off, then a hard stop after `shutdown_timeout`."""
        vm = self._set(vm, Status.STOPPING, "shutting down (ACPI)")
        try:
            if qemu.status(paths) != "running":
                qemu.execute(paths, "cont")  # a paused guest cannot see the power button
            qemu.execute(paths, "system_powerdown")
        except qemu.QEMUError as exc:
            log.warning("vm=%s: %s", vm.uuid, exc)
        deadline = time.monotonic() + self._settings.shutdown_timeout
        how = "hard stop after the guest ignored ACPI"
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                if qemu.status(paths) == "shutdown":
                    how = "the guest powered off (ACPI)"
                    break
            except qemu.QEMUError:
                how = "QEMU exited"
                break
            time.sleep(POWERDOWN_POLL_S)
        qemu.kill(paths)
        self._set(vm, Status.STOPPED, f"stopped: {how}", observed_generation=vm.generation, error="")

    def _delete(self, current: Versioned[VM], paths: VMPaths) -> None:
        vm = current.value
        if vm.status is not Status.DELETING:
            vm = self._set(vm, Status.DELETING, "deleting")
        qemu.kill(paths)
        backend = self._storage.get(vm.storage)
        try:
            if backend is not None:
                backend.delete(vm)
        except StorageError as exc:
            self._set(vm, Status.ERROR, f"delete failed: {exc}", error=f"delete failed: {exc}")
            return
        shutil.rmtree(paths.root, ignore_errors=True)
        latest = self._store.get(VMS, vm.uuid)
        if latest is not None:
            try:
                self._store.transact([Remove(VMS, vm.uuid, latest.mod_revision),
                                      *held_by(self._store, vm.uuid, vm_claims(latest.value))])
            except Conflict:
                self._workers.submit(vm.uuid)  # changed meanwhile: look again
                return
        self._store.delete_all(EVENTS, events_of(vm.uuid))
        with self._lock:
            self._mine.pop(vm.uuid, None)
        log.info("vm=%s deleted: no process, file or key left", vm.uuid)

    # -- writing ----------------------------------------------------------------------------------

    def _set(self, vm: VM, status: Status, event: str, **fields: Any) -> VM:
        """Move the VM to `status` (with `fields`) by compare-and-swap on its latest record."""
        def change(latest: VM) -> VM:
            if latest.hostname != self.host_key:
                raise _NotMine()
            check_transition(Writer.AGENT, latest.status, status)
            return latest.evolve(status=status, **fields)

        try:
            written = self._store.update(VMS, vm.uuid, change)
        except _NotMine:
            log.warning("vm=%s moved to another host meanwhile; not writing %s", vm.uuid, status)
            return vm
        if event:
            log.info("vm=%s %s", vm.uuid, event)
            self._event(vm.uuid, event, written.create_revision)
        with self._lock:
            if vm.uuid in self._mine:
                self._mine[vm.uuid] = written.value
        return written.value

    def _event(self, uuid: str, message: str, vm_created: int) -> None:
        """Tell the VM's event log, only while the VM (created at revision `vm_created`) exists: an
        event written after its deletion would outlive it for good."""
        try:
            self._store.transact([new_event(uuid, self._source, message)], guard=Guard(VMS.key(uuid), vm_created))
        except GuardFailed:
            log.debug("vm=%s is gone; event not recorded: %s", uuid, message)
        except StoreUnavailable as exc:
            log.warning("vm=%s: event not recorded (%s): %s", uuid, exc, message)


class _NotMine(Exception):
    pass


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return f": {lines[-1]}" if lines else ""


def machine_capacity(disk_dir: Path) -> Specs:
    ram_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    disk_dir.mkdir(parents=True, exist_ok=True)
    return Specs(cpu=os.cpu_count() or 1, ram=round(ram_kib / 1024**2, 1),
                 ssd=max(1, shutil.disk_usage(disk_dir).total // 1024**3))
