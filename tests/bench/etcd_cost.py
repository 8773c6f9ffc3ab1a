"""Benchmark: what one VM costs etcd — bytes stored, writes per request, and the database's growth.

1. On a whole ucloud of real processes (etcd, the API under gunicorn, the scheduler, one agent booting
   the tiny image in QEMU under TCG: the agent has no fake driver), one VM at a time, `--vms` times:
   POST /vms, wait until RUNNING, read the whole keyspace and add up key + value of every record of
   that VM (its record, its events, its claims), by prefix; then DELETE it. A watch on the whole
   keyspace counts the writes of each request (put and delete events, and transactions: distinct
   revisions) from the request until the VM is quiet again; `--actions` of the VMs also go through
   suspend, resume, shutdown, start and reboot before their deletion. Each VM has one NIC on a network
   (records only: the agent runs without an underlay), so its MAC claim counts.
2. On a fresh etcd (started by deploy/etcd.sh, so with its compaction and quota settings), the writes
   one VM made in part 1, in the same transactions, are replayed for `--churn` VMs (other uuids and
   names, several VMs per transaction, as many networks as VMs in a transaction), so that 10,000 VMs were created, went through their lives and
   were deleted (their events are kept, as they are for UCLOUD_EVENT_RETENTION); etcd's `dbSize` and
   `dbSizeInUse` are printed before, after, after a compaction and after a defragmentation.

Run it with PYTHONPATH set to the checkout, so that the daemons it starts run the same code.

    .venv/bin/python -m tests.bench.etcd_cost [--vms 100] [--actions 3] [--churn 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from tests.helpers.etcd import EtcdServer
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.config import load_settings
from ucloud_common.store import Store
from ucloud_common.vm import VMS

QUIET_S = 1.5  # a VM with no write for this long after its request is done with it
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
SHARED = "/v1/network/"  # records a VM writes to but shares with other VMs


@dataclass(frozen=True)
class Change:
    key: str
    value: bytes | None  # None: deleted
    revision: int


@dataclass
class KeyspaceLog:
    """Every change to the whole keyspace from `start` on, as a watch reports it."""

    store: Store
    start: int
    changes: list[Change] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        watch = self.store.watch(b"\0", b"\0", self.start)
        while not self.stopped.is_set():
            for event in watch.next(0.5) or []:
                with self.lock:
                    self.changes.append(Change(event.key.decode(), event.value, event.mod_revision))
        watch.cancel()

    def since(self, revision: int) -> list[Change]:
        with self.lock:
            return [c for c in self.changes if c.revision > revision]


def prefix(key: str) -> str:
    """The family a key belongs to: `/v1/vm/`, `/v1/event/`, `/v1/claim/vm-name/`, …"""
    parts = key.split("/")
    return "/".join(parts[:4 if parts[2] == "claim" else 3]) + "/"


def of_vm(changes: list[Change], uuid: str, keys: set[str]) -> list[Change]:
    """The changes to `uuid`'s records: keys naming it, values naming it (claims), and keys seen so
    (a claim's deletion carries no value). `keys` learns them."""
    mine = []
    for change in changes:
        if uuid in change.key or (change.value is not None and uuid.encode() in change.value) or change.key in keys:
            keys.add(change.key)
            mine.append(change)
    return mine


def quiet(log: KeyspaceLog, uuid: str, since: int, keys: set[str]) -> list[Change]:
    """Wait until `uuid`'s records have not changed for QUIET_S; return their changes since `since`."""
    count, settled_at = -1, time.monotonic()
    while True:
        mine = of_vm(log.since(since), uuid, keys)
        if len(mine) != count:
            count, settled_at = len(mine), time.monotonic()
        elif time.monotonic() - settled_at >= QUIET_S:
            return mine
        time.sleep(0.1)


def stored(store: Store, uuid: str, keys: set[str]) -> dict[str, int]:
    """Bytes (key + value) of `uuid`'s records now, by prefix. Of a network, shared by its VMs,
    only the VM's entry in `attached` counts."""
    sizes: Counter[str] = Counter()
    for value, meta in store.client.get_all():
        key = meta.key.decode()
        if key.startswith(SHARED):
            sizes[SHARED] += len(f'"{uuid}",') if uuid.encode() in value else 0
        elif uuid in key or uuid.encode() in value or key in keys:
            sizes[prefix(key)] += len(meta.key) + len(value)
    return dict(sizes)


def writes(changes: list[Change]) -> dict[str, Any]:
    return {"puts": sum(c.value is not None for c in changes), "deletes": sum(c.value is None for c in changes),
            "transactions": len({c.revision for c in changes}),
            "by_prefix": dict(Counter(prefix(c.key) for c in changes))}


def act(cluster: Cluster, log: KeyspaceLog, uuid: str, keys: set[str], action: str, status: str | None,
        ) -> list[Change]:
    """Ask `action`, wait until the agent observed it in `status` (None: the VM is gone), then quiet."""
    before = cluster.store.revision()
    method, path = ("DELETE", f"/api/v1/vms/{uuid}") if action == "delete" else ("POST", f"/api/v1/vms/{uuid}/{action}")
    code, body = cluster.call(method, path)
    assert code in (202, 204), (action, code, body)

    def done() -> bool:
        vm = cluster.store.get(VMS, uuid)
        if status is None:
            return vm is None
        return vm is not None and vm.value.status.value == status and \
            vm.value.observed_generation >= vm.value.generation
    wait_until(done, 60, f"{action} → {status or 'gone'}")
    return quiet(log, uuid, before, keys)


def create(cluster: Cluster, log: KeyspaceLog, i: int, network: str) -> tuple[str, set[str], list[Change]]:
    before = cluster.store.revision()
    code, body = cluster.call("POST", "/api/v1/vms", {"name": f"cost-{i:05d}", "image": "tiny", "networks": [network],
                                                      "specs": {"cpu": 1, "ram": 0.25, "ssd": 1}})
    assert code == 201, body
    uuid, keys = body["uuid"], set()

    def running() -> bool:
        vm = cluster.store.get(VMS, uuid)
        return vm is not None and vm.value.status.value == "RUNNING" and \
            vm.value.observed_generation >= vm.value.generation
    wait_until(running, 60, "RUNNING")
    return uuid, keys, quiet(log, uuid, before, keys)


def measure_vms(root: Path, count: int, with_actions: int) -> dict[str, Any]:
    sizes: list[dict[str, int]] = []
    phases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    lifecycle: list[Change] = []  # every write of one VM with actions, for part 2
    host = "h1"
    with running_cluster(root) as cluster:
        code, network = cluster.call("POST", "/api/v1/networks", {"name": "net"})
        assert code == 201, network
        log = KeyspaceLog(cluster.store, cluster.store.revision() + 1)
        follower = threading.Thread(target=log.follow, daemon=True)
        follower.start()
        try:
            for i in range(count):
                uuid, keys, changes = create(cluster, log, i, network["uuid"])
                phases["POST → RUNNING"].append(writes(changes))
                story = list(changes)
                sizes.append(stored(cluster.store, uuid, keys))
                if i < with_actions:
                    for action, status in (("suspend", "SUSPENDED"), ("resume", "RUNNING"), ("shutdown", "STOPPED"),
                                           ("start", "RUNNING"), ("reboot", "RUNNING")):
                        if action == "shutdown":  # the guest's acpid must be up to hear the button
                            wait_until(lambda: BOOTED in cluster.serial(host, uuid), 60, "the guest booted")
                        changes = act(cluster, log, uuid, keys, action, status)
                        phases[action].append(writes(changes))
                        story += changes
                    phases["bytes after those actions"].append(stored(cluster.store, uuid, keys))
                changes = act(cluster, log, uuid, keys, "delete", None)
                phases["delete"].append(writes(changes))
                phases["bytes kept after delete"].append({k: v for k, v in stored(cluster.store, uuid, keys).items() if v})
                if i == 0:
                    lifecycle = story + changes
        finally:
            log.stopped.set()
            follower.join()
    return {"sizes": sizes, "phases": phases, "lifecycle": lifecycle}


def etcdctl(endpoint: str, *args: str) -> str:
    return subprocess.run(["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True, check=True,
                          env={"ETCDCTL_API": "3"}).stdout


def etcd_status(endpoint: str) -> dict[str, int]:
    status = json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json"))[0]["Status"]
    return {"dbSize": status["dbSize"], "dbSizeInUse": status["dbSizeInUse"],
            "revision": status["header"]["revision"]}


def count(endpoint: str) -> int:
    return int(json.loads(etcdctl(endpoint, "get", "", "--prefix", "--limit", "1", "-w", "json")).get("count", 0))


def compact_and_defrag(endpoint: str, figures: dict[str, Any], label: str) -> None:
    """Compact at the current revision (--physical: wait until it is done), then defragment, and note
    the status after each."""
    revision = etcd_status(endpoint)["revision"]
    etcdctl(endpoint, "--command-timeout=300s", "compact", "--physical", str(revision))
    figures[f"after compaction{label}"] = etcd_status(endpoint)
    etcdctl(endpoint, "--command-timeout=300s", "defrag")
    figures[f"after defrag{label}"] = etcd_status(endpoint)


def renamed(key: str, uuid: str, new_uuid: str, i: int, networks: int) -> str:
    """`key` for the `i`th replayed VM: its uuid swapped, or else its last part replaced by one of
    the same length: another network among `networks`, or (a claim: a name, a MAC) one that no
    other replayed VM has."""
    if uuid in key:
        return key.replace(uuid, new_uuid)
    head, last = key.rsplit("/", 1)
    n = i % networks if key.startswith(SHARED) else i
    return f"{head}/{f'{n:0{len(last)}d}'[-len(last):]}"


def churn(root: Path, lifecycle: list[Change], vms: int) -> dict[str, Any]:
    """Replay `lifecycle` (the writes of one VM, from creation to deletion) for `vms` VMs."""
    uuid = next(c.key for c in lifecycle if c.key.startswith("/v1/vm/")).removeprefix("/v1/vm/")
    steps: dict[int, list[Change]] = defaultdict(list)
    for change in lifecycle:
        steps[change.revision].append(change)
    per_txn = MAX_TXN_OPS // max(len(s) for s in steps.values())
    etcd = EtcdServer(root / "etcd-churn")
    etcd.start()
    store = Store(load_settings(etcd_endpoints=etcd.endpoint))
    try:
        figures = {"empty": etcd_status(etcd.endpoint)}
        started = time.monotonic()
        ops = store.client.transactions
        for first in range(0, vms, per_txn):
            batch = [(i, f"{uuid[:-8]}{i:08x}") for i in range(first, min(first + per_txn, vms))]
            for step in steps.values():
                txn = []
                for i, new in batch:
                    for c in step:
                        key = renamed(c.key, uuid, new, i, per_txn)
                        txn.append(ops.delete(key) if c.value is None else
                                   ops.put(key, c.value.replace(uuid.encode(), new.encode())))
                store.client.transaction(compare=[], success=txn, failure=[])
        figures["seconds"] = round(time.monotonic() - started, 1)
        figures["keys left"] = count(etcd.endpoint)
        figures["after churn"] = etcd_status(etcd.endpoint)
        compact_and_defrag(etcd.endpoint, figures, "")
        # The events' shared leases expire after UCLOUD_EVENT_RETENTION: then nothing of the VMs is left.
        etcdctl(etcd.endpoint, "del", "--prefix", "/v1/event/")
        figures["keys left, events expired"] = count(etcd.endpoint)
        compact_and_defrag(etcd.endpoint, figures, ", events expired")
        return figures
    finally:
        store.close()
        etcd.stop()


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--actions", type=int, default=3, help="how many of the VMs also go through every action")
    parser.add_argument("--churn", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        measured = measure_vms(Path(tmp) / "cluster", args.vms, args.actions)
        sizes, phases = measured["sizes"], measured["phases"]
        print(f"bytes stored per RUNNING VM (key + value), mean of {len(sizes)}:")
        for name in sorted({p for s in sizes for p in s}):
            print(f"  {name:28} {statistics.mean(s.get(name, 0) for s in sizes):8.0f}")
        print(f"  {'total':28} {statistics.mean(sum(s.values()) for s in sizes):8.0f}"
              f"   (max {max(sum(s.values()) for s in sizes)})")
        after = phases.pop("bytes after those actions", [])
        if after:
            print(f"  after suspend … reboot:      {statistics.mean(sum(s.values()) for s in after):8.0f}  {after[0]}")
        left = phases.pop("bytes kept after delete")  # its events, for UCLOUD_EVENT_RETENTION
        print(f"  kept after delete:           {statistics.mean(sum(s.values()) for s in left):8.0f}  {left[0]}")
        print("etcd writes per request, mean (max) — puts + deletes in transactions:")
        for name, runs in phases.items():
            def m(what: str) -> str:
                values = [r[what] for r in runs]
                return f"{statistics.mean(values):5.1f} ({max(values)})"
            by: Counter[str] = Counter()
            for r in runs:
                by.update(r["by_prefix"])
            print(f"  {name:16} puts {m('puts')}  deletes {m('deletes')}  transactions {m('transactions')}  "
                  f"{ {k: round(v / len(runs), 1) for k, v in by.items()} }")
        print("the first VM's writes, by transaction (revision: key, bytes of value; - deleted):")
        for revision, changes in groupby(measured["lifecycle"], key=lambda c: c.revision):
            print(f"  {revision}: " + ", ".join(f"{c.key[:60]} {len(c.value) if c.value is not None else '-'}"
                                              for c in changes))
        figures = churn(Path(tmp), measured["lifecycle"], args.churn)
        print(f"etcd after {args.churn} VMs created and deleted ({len(measured['lifecycle'])} writes each, "
              f"replayed in {figures['seconds']} s, {figures['keys left']} keys left; "
              f"{figures['keys left, events expired']} once their events expired):")
        for name in ("empty", "after churn", "after compaction", "after defrag", "after compaction, events expired",
                     "after defrag, events expired"):
            s = figures[name]
            print(f"  {name:18} dbSize {mib(s['dbSize']):>11}  dbSizeInUse {mib(s['dbSizeInUse']):>11}  "
                  f"revision {s['revision']}")
        print(json.dumps({"sizes": sizes, "phases": phases, "after_actions": after, "left": left, "churn": figures}))


if __name__ == "__main__":
    main()
