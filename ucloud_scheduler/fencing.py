"""Fencing: making sure a dead host can no longer write to the disks of its VMs before they are
started elsewhere. A host that only looks dead (a cut network, a stalled agent) would otherwise run
the same VM twice on one shared disk and corrupt it.

A fence is tried only for VMs on shared storage; a VM whose disk is local to the dead host waits
for the host to return. With Ceph configured, the RBD fence blocklists every client that has one of
the host's VM disks open and breaks their locks (`RBDFence`); operators may add a command (IPMI
power-off, a PDU) through `UCLOUD_FENCE_COMMAND`. Every configured fence must succeed.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol, TypeVar

from ucloud_common.ceph import Ceph, CephError, ImageClients
from ucloud_common.host import Host
from ucloud_common.vm import VM
from ucloud_common.vmdisks import RBDPools

log = logging.getLogger(__name__)


class FenceFailed(Exception):
    """The host could not be fenced, or the fence could not be verified; `str()` says what and why.
    The host's VMs must not start elsewhere; fencing again later is safe (every fence is idempotent)."""


class Fence(Protocol):
    def fence(self, host: Host, vms: list[VM]) -> None:
        """Cut `host` off from the shared disks of `vms` (its VMs), or raise `FenceFailed` saying
        why. Idempotent: it may be called again for a host already fenced (a scheduler restart)."""


class NoFence:
    """What runs when no fence is configured: refuses, so shared-storage VMs of a dead host stay
    KILLED (safe) until an operator configures fencing or the host returns."""

    def fence(self, host: Host, vms: list[VM]) -> None:
        raise FenceFailed("no fencing is configured (set UCLOUD_FENCE_COMMAND or UCLOUD_CEPH_CONF)")


class CommandFence:
    """Runs the operator's command with the host's name and address appended; exit 0 means fenced."""

    def __init__(self, command: str, timeout: float) -> None:
        self._argv = shlex.split(command)
        self._timeout = timeout

    def fence(self, host: Host, vms: list[VM]) -> None:
        argv = [*self._argv, host.name, host.address]
        try:
            result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=self._timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FenceFailed(f"fence command {argv[0]} failed: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise FenceFailed(f"fence command {argv[0]} exited {result.returncode}: {detail[0]}")
        log.info("fenced host %s with %s", host.name, argv[0])


FENCE_TIMEOUT_S = 30.0
"""How long an RBD fence waits for the OSDs to drop the watches of the clients it blocklisted before it
gives up (FenceFailed). Measured on the one-node lab Ceph (tests/bench/fence.py): a watch is gone
0.6–0.8 s after the entry is asked for, a few ms after the monitor has committed it; a busy cluster
takes longer, and a fence that gave up is retried by the scheduler (`Settings.fence_retry`)."""

POLL_S = 0.1
"""Between two looks at an image's watchers while waiting for the blocklisted ones to go."""

FENCE_WORKERS = 16
"""Images fenced at once. Each step is a round trip to a monitor or an OSD, during which the bindings
release the GIL, so threads overlap them: the fence of a host costs about what one image costs, not
one image's cost per VM. 16 covers a host of 100 VMs in a few rounds without flooding the monitors."""

BLOCKLIST_WORKERS = 64
"""Blocklist entries requested at once. The monitor commits every entry it received within one Paxos
proposal (paxos_propose_interval, 1 s by default), so entries asked for together cost one wait: measured, 20 disks
took 1.7 s to blocklist 16 then 4 at a time, against ≈0.7 s for one round. A request is only a wait
on the monitor, so a thread each is cheap."""

T = TypeVar("T")
R = TypeVar("R")


class RBDFence:
    """Stops every Ceph client that has one of the dead host's VM disks open, and proves it.

    For each disk (`<vm pool>/<vm uuid>`, and `<hdd pool>/<vm uuid>-hdd` for a VM with an HDD disk:
    ucloud_common.vmdisks) it lists the clients that have it open: the watchers of its
    header and the holders of its lock (an idle QEMU holds no lock, since librbd locks at the first
    write, but it does watch). It blocklists every such client instance, waits until this client has
    the OSD map with the entries, checks that the blocklist holds each one, waits until the OSDs have
    dropped their watches, and then breaks their locks, so the VM's next QEMU takes the lock at once.
    Only when all of that is verified does `fence` return; otherwise it raises FenceFailed naming each
    disk and what was not verified. Disks are fenced in parallel.

    Idempotent: a disk already fenced has no client left (nothing to do) and an absent disk is fine.
    Blocklisting is by client instance (`ip:port/nonce`), so nothing else on the host is affected; a
    blocklisted QEMU stays refused even after the entry expires (measured: its writes still failed
    with ESHUTDOWN once a 5 s entry was gone; librbd does not reopen the image).

    A client that reached no OSD for 30 s (osd_client_watch_timeout) before the fence and holds no
    lock has no watch left to find, and would write again when it comes back (measured with a
    SIGSTOPped QEMU): the agent records each QEMU's client instances on its VM when it starts it
    (`VM.disk_clients`), and those are blocklisted too. A QEMU started some other way is covered only
    by a fence of the whole host (UCLOUD_FENCE_COMMAND).
    """

    def __init__(self, ceph: Ceph, vm_pool: str, timeout: float = FENCE_TIMEOUT_S,
                 workers: int = FENCE_WORKERS, hdd_pool: str = "") -> None:
        self._ceph = ceph
        self._pools = RBDPools(vm_pool, hdd_pool)
        self._timeout = timeout
        self._workers = workers

    def fence(self, host: Host, vms: list[VM]) -> None:
        # Each VM's HDD disk too: its QEMU has it open through a Ceph client of its own.
        disks = sorted({disk for vm in vms if vm.storage == "rbd" for disk in self._pools.disks(vm)})
        if not disks:
            return
        started = time.monotonic()
        failures: list[str] = []
        # A failure on one disk does not stop the others: every client blocklisted now is one less
        # that can write while the scheduler waits to retry.
        with ThreadPoolExecutor(max_workers=min(self._workers, len(disks)), thread_name_prefix="rbd-fence") as pool:
            seen = _each(pool, self._clients_of, disks, failures)
            # The clients the agents recorded when the QEMUs started as well: one that reached no OSD
            # for 30 s is no watcher any more, yet would write again once it can.
            recorded = {address for vm in vms if vm.storage == "rbd" for address in vm.disk_clients}
            wanted = sorted(recorded | {address for clients in seen.values() if clients for address in clients.addresses})
            with ThreadPoolExecutor(max_workers=max(1, min(BLOCKLIST_WORKERS, len(wanted))),
                                    thread_name_prefix="rbd-blocklist") as requests:
                added = set(_each(requests, self._ceph.blocklist_add, wanted, failures))
            verified = self._verified_blocklisted(added, failures)
            # A lock is broken only once its holder is known to be refused, or it could take it again.
            ready = [(disk, clients) for disk, clients in seen.items()
                     if clients and clients.addresses and clients.addresses <= verified]
            _each(pool, partial(self._settle, deadline=time.monotonic() + self._timeout), ready, failures)
        for disk, clients in seen.items():
            self._log(host, disk, clients, added)
        if failures:
            raise FenceFailed(f"cannot fence host {host.name}: {'; '.join(failures)}")
        log.info("fenced host %s: %d disk(s), %d client(s) blocklisted, verified in %.2f s", host.name, len(disks),
                 len(added), time.monotonic() - started)

    def _clients_of(self, disk: tuple[str, str]) -> ImageClients | None:
        return self._ceph.image_clients(*disk)

    def _verified_blocklisted(self, addresses: set[str], failures: list[str]) -> set[str]:
        """Those of `addresses` that the blocklist of the newest OSD map (which this client then has)
        holds; the others are noted in `failures`."""
        if not addresses:
            return set()
        try:
            self._ceph.wait_for_latest_osdmap()
            listed = self._ceph.blocklisted()
        except CephError as exc:
            failures.append(f"cannot verify the blocklist: {exc}")
            return set()
        missing = sorted(address for address in addresses if not _covered(address, listed))
        if missing:
            failures.append(f"{', '.join(missing)} not in the OSD blocklist after being added (osd blocklist ls)")
        return addresses - set(missing)

    def _settle(self, opened: tuple[tuple[str, str], ImageClients], deadline: float) -> None:
        """Wait until the OSD has dropped the blocklisted clients' watches on the disk (proof that it
        refuses them), then break their locks and check that no blocklisted client is left on it."""
        (pool, disk), clients = opened
        image = f"{pool}/{disk}"
        fenced = clients.addresses
        while still := (self._ceph.watchers(pool, disk) or frozenset()) & fenced:
            if time.monotonic() > deadline:
                raise FenceFailed(f"{image} is still watched by {', '.join(sorted(still))} {self._timeout:g} s "
                                  f"after blocklisting (the OSD has not dropped their watches)")
            time.sleep(POLL_S)
        for locker in clients.lockers:
            self._ceph.break_lock(pool, disk, locker)
        after = self._ceph.image_clients(pool, disk)
        left = sorted(after.addresses & fenced) if after else []
        if left:
            raise FenceFailed(f"{image} is still open by {', '.join(left)} after blocklisting and breaking the lock")

    def _log(self, host: Host, disk: tuple[str, str], clients: ImageClients | None, added: set[str]) -> None:
        image = "/".join(disk)
        if clients is None:
            log.info("fenced host %s: %s does not exist, nothing to fence", host.name, image)
            return
        if not clients.addresses:
            log.warning("fenced host %s: %s had no watcher and no lock holder, nothing to blocklist: its QEMU "
                        "is gone, or reached no OSD for 30 s (only a fence of the whole host covers that)",
                        host.name, image)
            return
        holders = {locker.address for locker in clients.lockers}
        for address in sorted(clients.addresses & added):
            roles = [role for role, where in (("watcher", clients.watchers), ("lock holder", holders))
                     if address in where]
            log.info("fenced host %s: blocklisted %s (%s of %s)", host.name, address, " and ".join(roles), image)


def _each(pool: ThreadPoolExecutor, action: Callable[[T], R], items: Iterable[T], failures: list[str]) -> dict[T, R]:
    """Run `action` on every item in the pool; return the results of those that succeeded, and add to
    `failures` why each other one failed (one failure never hides another)."""
    futures = {item: pool.submit(action, item) for item in items}
    results: dict[T, R] = {}
    for item, future in futures.items():
        try:
            results[item] = future.result()
        except (CephError, FenceFailed) as exc:
            failures.append(str(exc))
    return results


def _covered(address: str, blocklist: frozenset[str]) -> bool:
    """Whether the blocklist refuses `address` (`ip:port/nonce`): listed itself, or its whole IP (`ip:0/0`)."""
    ip = address.rsplit(":", 1)[0]
    return address in blocklist or f"{ip}:0/0" in blocklist


class AllFences:
    def __init__(self, fences: list[Fence]) -> None:
        self._fences = fences

    def fence(self, host: Host, vms: list[VM]) -> None:
        for fence in self._fences:
            fence.fence(host, vms)
