"""Watching a cluster of real processes under fault injection, and judging what it did.

`History` records every change of every VM as a watch on etcd saw it, and samples which QEMU
processes run for which VM on which (simulated) host. The checks below are what must hold after any
fault: statuses move only as `states.TRANSITIONS` allows, every VM that should run converges to one
QEMU on one live host, a QEMU left behind on a host thought dead cannot write a shared disk, every
daemon is alive or exited non-zero, and a deleted VM leaves nothing anywhere.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.processes import Cluster
from ucloud_common.claim import MACS, VM_NAMES
from ucloud_common.host import HOSTS, HostStatus
from ucloud_common.states import TRANSITIONS, Requested, Status, Writer
from ucloud_common.store import Change, Follower, Snapshot
from ucloud_common.vm import VMS
from ucloud_vm import qemu
from ucloud_vm.paths import VMPaths

GIB = 1024**3
PATTERN = 0x5A


@dataclass(frozen=True)
class Seen:
    revision: int
    status: Status | None  # None: deleted, or unknown across a relist (see `gap`)
    hostname: str
    gap: bool = False


class History:
    """Every status a VM went through, in revision order, from the start of a test."""

    def __init__(self, cluster: Cluster) -> None:
        self._follower = Follower(cluster.store, VMS)
        self.seen: dict[str, list[Seen]] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="history", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for item in self._follower:
            with self._lock:
                if isinstance(item, Snapshot):
                    for uuid in set(self.seen) | set(item.items):
                        got = item.items.get(uuid)
                        self.seen[uuid].append(Seen(item.revision, got.value.status if got else None,
                                                    got.value.hostname if got else "", gap=True))
                elif isinstance(item, Change):
                    value = item.value.value if item.value else None
                    self.seen[item.name].append(Seen(item.revision, value.status if value else None,
                                                     value.hostname if value else ""))

    def stop(self) -> None:
        self._follower.stop()
        self._thread.join(timeout=5)

    def illegal_transitions(self) -> list[str]:
        """Status moves that no writer may make; a move across a relist is not judged (steps
        between may be missing from a snapshot)."""
        allowed = {old: TRANSITIONS[Writer.AGENT].get(old, frozenset()) | TRANSITIONS[Writer.SCHEDULER].get(old, frozenset())
                   for old in Status}
        wrong = []
        with self._lock:
            for uuid, seen in self.seen.items():
                for before, after in itertools.pairwise(seen):
                    if after.gap or before.status is None or after.status is None or before.status is after.status:
                        continue
                    if after.status not in allowed[before.status]:
                        wrong.append(f"{uuid}: {before.status} → {after.status} at revision {after.revision}")
        return wrong

    def statuses(self, uuid: str) -> list[str]:
        with self._lock:
            return [str(s.status) for s in self.seen.get(uuid, [])]


def qemus(runs: Path) -> dict[str, list[tuple[str, int]]]:
    """The live QEMU processes of the cluster whose run directory is `runs`: VM uuid → [(host, pid)]."""
    found: dict[str, list[tuple[str, int]]] = defaultdict(list)
    prefix = f"{runs}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if not argv[0].startswith(b"qemu-system") or state in ("Z", "X") or b"-pidfile" not in argv:
            continue
        pidfile = argv[argv.index(b"-pidfile") + 1].decode()
        if pidfile.startswith(prefix):
            host, _, uuid = pidfile[len(prefix):].split("/")[:3]
            found[uuid].append((host, int(proc.name)))
    return found


def hmp(cluster: Cluster, host: str, uuid: str, command: str, timeout: float = 10) -> str:
    """A human-monitor command on the VM's QEMU on `host`; "" if QEMU did not answer in time."""
    try:
        return str(qemu.execute(VMPaths.of(cluster.run_dir(host), uuid), "human-monitor-command", timeout=timeout,
                                **{"command-line": command}))
    except qemu.QEMUError:
        return ""


def write_through(cluster: Cluster, host: str, uuid: str, offset: int) -> None:
    """Write PATTERN at `offset` of the VM's disk through the QEMU on `host` (as its guest would),
    with FUA, so it does not linger in a cache. qemu-io prints to QEMU's stdout, not to the monitor,
    and a QEMU fenced off its disk may hang in the request: whether the write landed is told by
    reading the disk (`rbd_bytes`) a little later."""
    hmp(cluster, host, uuid, f'qemu-io disk0 "write -f -P {PATTERN} {offset} 4096"')
    time.sleep(2)  # longer than librbd's rbd_cache_max_dirty_age (1 s), had it cached the write


def rbd_bytes(conf: Path, pool: str, image: str, offset: int, length: int = 4096) -> bytes:
    import rados
    import rbd

    with rados.Rados(conffile=str(conf)) as cluster, cluster.open_ioctx(pool) as ioctx, \
            rbd.Image(ioctx, image, read_only=True) as handle:
        return bytes(handle.read(offset, length))


def converged(cluster: Cluster, uuids: list[str], timeout: float) -> None:
    """Every VM requested RUNNING or SUSPENDED is so, on a host that is UP, with exactly one QEMU,
    on that host; raises saying which VM is not."""
    deadline = time.monotonic() + timeout
    while True:
        problems = _not_converged(cluster, uuids)
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged within {timeout} s: " + "; ".join(problems))
        time.sleep(0.25)


def _not_converged(cluster: Cluster, uuids: list[str]) -> list[str]:
    running = qemus(cluster.runs)
    problems = []
    for uuid in uuids:
        found = cluster.store.get(VMS, uuid)
        if found is None:
            problems.append(f"{uuid} is gone")
            continue
        vm = found.value
        if vm.requested not in (Requested.RUNNING, Requested.SUSPENDED):
            continue
        host = vm.hostname.rpartition("/")[2]
        where = [h for h, _ in running.get(uuid, [])]
        record = cluster.store.get(HOSTS, host) if host else None
        up = record is not None and record.value.status is HostStatus.UP
        if vm.status.value != vm.requested.value or where != [host] or not up:
            problems.append(f"{uuid} is {vm.status} on {host or 'no host'}{'' if up else ' (not UP)'} "
                            f"(requested {vm.requested}), "
                            f"QEMUs on {where or 'no host'}, error {vm.error!r}")
    return problems


def daemons_sound(cluster: Cluster) -> list[str]:
    """Daemons that exited with 0 although nobody stopped them: a daemon either runs or says it
    failed (so that its supervisor restarts it); it never ends quietly."""
    named = {**{f"agent {h}": p for h, p in cluster.agents.items()},
             **{f"scheduler {s}": p for s, p in cluster.schedulers.items()},
             **{f"process {p.args[1]}": p for p in cluster.others}}  # type: ignore[index]
    return [f"{name} exited 0" for name, process in named.items() if process.poll() == 0]


def delete_all(cluster: Cluster, timeout: float = 90) -> None:
    """Delete every VM through the API and check that nothing of any is left: no key, event,
    claim, runtime file, disk (local or RBD) or QEMU."""
    for uuid in cluster.store.list(VMS).items:
        status, body = cluster.call("DELETE", f"/api/v1/vms/{uuid}")
        assert status in (202, 204, 404), body
    deadline = time.monotonic() + timeout
    while cluster.store.list(VMS).items:
        if time.monotonic() > deadline:
            left = {u: (v.value.status, v.value.error) for u, v in cluster.store.list(VMS).items.items()}
            raise AssertionError(f"VMs not deleted within {timeout} s: {left}")
        time.sleep(0.25)
    # Hosts that ran a VM once (a stale QEMU on a host that was thought dead) clean up on their own
    # time: give them a little.
    while leftovers := _leftovers(cluster):
        if time.monotonic() > deadline + 30:
            raise AssertionError(f"left behind after deleting every VM: {leftovers}")
        time.sleep(0.25)


def _leftovers(cluster: Cluster) -> dict[str, list[str]]:
    # Events are not leftovers: they outlive their VM for UCLOUD_EVENT_RETENTION, on a lease
    # (tests/api/test_audit.py checks that they go then).
    found = {
        "name claims": list(cluster.store.list(VM_NAMES).items),
        "MAC claims": list(cluster.store.list(MACS).items),
        "runtime dirs": [str(p) for p in cluster.runs.glob("*/vms/*")],
        "local disks": [str(p) for p in (cluster.root / "disks").glob("*")],
        "QEMUs": list(qemus(cluster.runs)),
    }
    conf = _setting(cluster, "UCLOUD_CEPH_CONF")
    if conf:
        found["RBD disks"] = _rbd_list(Path(conf), "vms")
    return {k: v for k, v in found.items() if v}


def _setting(cluster: Cluster, name: str) -> str:
    conf = Path(cluster.env["UCLOUD_CONFIG"]).read_text().splitlines()
    return next((line.split("=", 1)[1] for line in conf if line.startswith(f"{name}=")), "")


def _rbd_list(conf: Path, pool: str) -> list[str]:
    import rados
    import rbd

    with rados.Rados(conffile=str(conf)) as cluster, cluster.open_ioctx(pool) as ioctx:
        return list(rbd.RBD().list(ioctx))


def garbage_everywhere(cluster: Cluster) -> list[str]:
    """Write garbage (not JSON, JSON of the wrong shape, keys that are no valid name) under every
    prefix ucloud reads; return the keys, for removal."""
    keys = []
    prefixes = ["/v1/vm/", "/v1/host/", "/v1/host-alive/", "/v1/network/", "/v1/file/", "/v1/image/",
                "/v1/user/", "/v1/event/", "/v1/claim/vm-name/", "/v1/claim/mac/", "/v1/claim/network-name/",
                "/v1/claim/image-name/", "/v1/claim/vxlan-id/", "/v1/leader/", "/v1/token/", "/v1/idempotency/"]
    values = [b"\xff\xfe not json", json.dumps({"uuid": 42, "status": "EXPLODED"}).encode(), b"[]", b"null"]
    for prefix in prefixes:
        for i, value in enumerate(values):
            for name in (f"garbage-{i}", f"../bad key {i}"):
                cluster.store.client.put(prefix + name, value)
                keys.append(prefix + name)
    return keys

