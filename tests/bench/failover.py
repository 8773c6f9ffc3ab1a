"""Benchmark: how long the rbd VMs of a dead host take to run elsewhere.

A cluster of real processes (etcd, API, scheduler, two agents h1 and h2, a one-node Ceph) with the
default 10 s host lease. N VMs on RBD run on h1, their guests booted; then h1 freezes: its agent is
killed with SIGKILL and its QEMUs are stopped with SIGSTOP (they keep their disks open, as on a hung
host, but no longer eat the CPU that h2 shares with them on this one machine — a dead host's
QEMUs would not). The clock runs from the kill until each VM is RUNNING on h2: the lease expires,
the scheduler declares h1 DOWN, fences it (blocklists every client of the disks, verified), and
places the VMs. Printed per N: when h1 was recorded fenced, when the last VM was placed on h2, and
p50 / p99 / max over the VMs of the time to RUNNING on h2.

    .venv/bin/python -m tests.bench.failover [--vms 1 5 20] [--lease 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from tests.bench.stats import percentile
from tests.helpers.ceph import CephServer
from tests.helpers.faults import delete_all, qemus
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.host import HOSTS

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


def one_failover(cluster: Cluster, count: int) -> dict[str, float]:
    _maintenance(cluster, "h2", True)
    uuids = []
    for i in range(count):
        status, vm = cluster.call("POST", "/api/v1/vms", {"name": f"f{count}-{i}", "specs": SPECS,
                                                           "image": "tiny-rbd", "storage": "rbd"})
        assert status == 201, vm
        uuids.append(vm["uuid"])
    wait_until(lambda: all(cluster.vm(u)["status"] == "RUNNING" for u in uuids), 300, "all RUNNING on h1")
    wait_until(lambda: all(BOOTED in cluster.serial("h1", u) for u in uuids), 600, "all guests booted")
    _maintenance(cluster, "h2", False)
    victim = cluster.agents["h1"]
    frozen = [pid for u in uuids for _, pid in qemus(cluster.root).get(u, [])]
    killed = time.monotonic()
    victim.kill()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    victim.wait()
    del cluster.agents["h1"]
    took: dict[str, float] = {}
    placed: dict[str, float] = {}
    fenced = 0.0
    while len(took) < count:
        if time.monotonic() - killed > 300:
            raise AssertionError(f"only {len(took)} of {count} VMs running elsewhere after 300 s")
        host = cluster.store.get(HOSTS, "h1")
        if not fenced and host is not None and host.value.fenced:
            fenced = time.monotonic() - killed
        for uuid in uuids:
            if uuid not in took:
                vm = cluster.vm(uuid)
                if vm["hostname"].endswith("/h2"):
                    placed.setdefault(uuid, time.monotonic() - killed)
                if vm["status"] == "RUNNING" and vm["hostname"].endswith("/h2"):
                    took[uuid] = time.monotonic() - killed
        time.sleep(0.05)
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)  # blocklisted by now: h1's agent stops them when it returns
    cluster.start_agent("h1")
    delete_all(cluster)
    values = list(took.values())
    return {"vms": count, "fenced_s": fenced, "placed_max_s": max(placed.values()), "p50_s": statistics.median(values),
            "p99_s": percentile(values, 99), "max_s": max(values)}


def _maintenance(cluster: Cluster, host: str, on: bool) -> None:
    status, body = cluster.call("POST", f"/api/v1/hosts/{host}/maintenance", {"on": on})
    assert status == 200, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--lease", type=int, default=10, help="host lease TTL in seconds [10, the default]")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        ceph = CephServer(Path(tmp) / "ceph")
        ceph.start()
        try:
            # 20 one-CPU VMs on one host: more than 2 cores × the default over-commit of 4 offers.
            with running_cluster(Path(tmp) / "cluster", hosts=("h1", "h2"), capacity={"cpu": "32"},
                                 UCLOUD_CEPH_CONF=str(ceph.conf),
                                 UCLOUD_HOST_LEASE_TTL=str(args.lease)) as cluster:
                wait_until(lambda: all(_up(cluster, h) for h in ("h1", "h2")), 60, "both hosts UP")
                for count in args.vms:
                    results.append(one_failover(cluster, count))
                    wait_until(lambda: _up(cluster, "h1"), 60, "h1 UP again")
        finally:
            ceph.stop()
    print(f"host lease {args.lease} s; from SIGKILL of h1's agent to each rbd VM RUNNING on h2:")
    print(f"{'VMs':>4} {'fenced':>8} {'placed':>8} {'p50':>7} {'p99':>7} {'max':>7}")
    for r in results:
        print(f"{r['vms']:>4} {r['fenced_s']:7.1f}s {r['placed_max_s']:7.1f}s {r['p50_s']:6.1f}s {r['p99_s']:6.1f}s "
              f"{r['max_s']:6.1f}s")
    print(json.dumps(results))


def _up(cluster: Cluster, host: str) -> bool:
    found = cluster.store.get(HOSTS, host)
    return found is not None and found.value.status.value == "UP"


if __name__ == "__main__":
    main()
