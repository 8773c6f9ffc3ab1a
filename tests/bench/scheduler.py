"""Benchmark of ucloud-scheduler: 5,000 simulated hosts, 50,000 VMs created as fast as possible.

Starts its own etcd (on /dev/shm) and one `ucloud-scheduler run`, registers the hosts (records and
liveness keys on one lease), creates the VMs in transactions of 100, and follows the VM family to
see each placement. Prints placements per second, p50 / p99 from a VM's creation to its `hostname`
being set, and the scheduler's peak memory.

    .venv/bin/python -m tests.bench.scheduler [--hosts 5000] [--vms 50000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path

from tests.bench.stats import percentile
from tests.helpers.etcd import EtcdServer
from ucloud_common.config import load_settings
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.store import Change, Follower, KeptLease, Store
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VMS, VM

BIN = Path(sys.executable).parent
BATCH = 100


def put_all(store: Store, items: list[tuple[str, bytes]], lease: int | None = None) -> None:
    tx = store.client.transactions
    for start in range(0, len(items), BATCH):
        ops = [tx.put(key, value, lease=lease) for key, value in items[start:start + BATCH]]
        store.client.transaction(compare=[], success=ops, failure=[])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=5_000)
    parser.add_argument("--vms", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=0,
                        help="create VMs at this many per second (0: as fast as possible); below the "
                        "scheduler's throughput this measures latency without a queue")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd")
        etcd.start()
        scheduler = None
        try:
            settings = load_settings(etcd_endpoints=etcd.endpoint)
            store = Store(settings)
            lease = KeptLease(store, ttl=30, interval=5)
            put_all(store, [(HOSTS_ALIVE.key(f"h{i:05}"), HOSTS_ALIVE.encode(HostAlive(agent_id="bench")))
                            for i in range(args.hosts)], lease=lease.id)
            put_all(store, [(HOSTS.key(f"h{i:05}"), HOSTS.encode(Host(name=f"h{i:05}", capacity=Specs(
                cpu=64, ram=512, ssd=10_000)))) for i in range(args.hosts)])
            env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": etcd.endpoint, "UCLOUD_LOG_LEVEL": "WARNING"}
            scheduler = subprocess.Popen([str(BIN / "ucloud-scheduler"), "run", "--name", "bench"], env=env)
            while store.client.get(leader_key("scheduler"))[0] is None:
                time.sleep(0.1)
            time.sleep(2)  # let it list the hosts

            created: dict[str, float] = {}
            placed: dict[str, float] = {}
            done = threading.Event()
            follower = Follower(store, VMS, start_revision=store.revision() + 1)

            def follow() -> None:
                for item in follower:
                    if isinstance(item, Change) and item.value is not None and item.value.value.hostname:
                        placed.setdefault(item.name, time.monotonic())
                        if len(placed) == args.vms:
                            done.set()
                            return

            threading.Thread(target=follow, daemon=True).start()
            vms = [VM(uuid=str(uuidlib.uuid4()), owner=f"u{i % 500}", name=f"vm{i}", image="tiny",
                      specs=Specs(cpu=1, ram=2, ssd=20)) for i in range(args.vms)]
            encoded = [(VMS.key(v.uuid), VMS.encode(v)) for v in vms]
            start = time.monotonic()
            step = BATCH if not args.rate else max(1, int(args.rate / 50))
            for first in range(0, len(encoded), step):
                if args.rate:
                    time.sleep(max(0.0, start + first / args.rate - time.monotonic()))
                put_all(store, encoded[first:first + step])
                now = time.monotonic()
                for v in vms[first:first + step]:
                    created[v.uuid] = now
            created_in = time.monotonic() - start
            if not done.wait(600):
                sys.exit(f"only {len(placed)} of {args.vms} placed within 600 s")
            follower.stop()
            elapsed = max(placed.values()) - start
            latencies = [(placed[u] - created[u]) * 1000 for u in created]
            result = {
                "hosts": args.hosts, "vms": args.vms, "created_per_s": round(args.vms / created_in),
                "placements_per_s": round(args.vms / elapsed),
                "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
                "scheduler_peak_rss_mib": round(peak_rss_mib(scheduler.pid), 1),
            }
            print(f"{args.vms} VMs on {args.hosts} hosts: created at {result['created_per_s']}/s, placed at "
                  f"{result['placements_per_s']}/s; creation → hostname p50 {result['p50_ms']} ms, "
                  f"p99 {result['p99_ms']} ms; scheduler peak RSS {result['scheduler_peak_rss_mib']} MiB")
            print(json.dumps(result))
            lease.close()
        finally:
            if scheduler is not None:
                scheduler.terminate()
                scheduler.wait()
            etcd.stop()


if __name__ == "__main__":
    main()
