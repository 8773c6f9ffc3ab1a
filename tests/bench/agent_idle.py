"""Benchmark: what an agent costs while nothing happens to its VMs.

A cluster of real processes (etcd, API, scheduler, one agent) with N tiny VMs on the agent's host,
SUSPENDED (their QEMUs up, CPUs stopped: fifty TCG guests booting would take this 2-core machine for
many minutes, and the agent's work for a VM — its events followed, its sweep — is the same whether
the guest runs or not; `--running` boots them instead). Then the agent's own CPU time (utime + stime from /proc, its
threads included; not the QEMUs') is read over a quiet period, twice: as it runs (each QEMU's events
followed on its own monitor, every QEMU looked at only each 30 s sweep), and with the agent started
again with a sweep each second — what every agent did before it followed events: a `query-status`
look at each QEMU, once a second. Printed: % of one core for each.

    .venv/bin/python -m tests.bench.agent_idle [--vms 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet_cpu(cluster: Cluster, seconds: float) -> float:
    """The agent's CPU over `seconds`, as % of one core (after a settling pause: its first looks)."""
    time.sleep(10)
    pid = cluster.agents["h1"].pid
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--running", action="store_true", help="boot the guests instead of suspending them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-agent-") as tmp, \
            running_cluster(Path(tmp), capacity={"cpu": str(args.vms), "ram": str(args.vms), "ssd": str(2 * args.vms)}) as cluster:
        uuids = []
        started = time.monotonic()
        for i in range(args.vms):  # one at a time: fifty guests booting at once would starve each other
            status, vm = cluster.call("POST", "/api/v1/vms", {"name": f"idle{i}", "image": "tiny", "specs": SPECS})
            assert status == 201, vm
            uuids.append(vm["uuid"])
            cluster.wait(vm["uuid"], "RUNNING", timeout=600)
            if not args.running:  # at once, before its guest has booted far
                assert cluster.call("POST", f"/api/v1/vms/{vm['uuid']}/suspend")[0] == 202
                cluster.wait(vm["uuid"], "SUSPENDED", timeout=600)
        if args.running:
            wait_until(lambda: all(BOOTED in cluster.serial("h1", u) for u in uuids), 1200, "every guest booted")
        print(f"{args.vms} tiny VMs {'running' if args.running else 'suspended'} after "
              f"{time.monotonic() - started:.0f} s")
        following = quiet_cpu(cluster, args.seconds)
        cluster.restart_agent("h1", UCLOUD_MONITOR_SWEEP_INTERVAL="1")
        polling = quiet_cpu(cluster, args.seconds)
        cluster.restart_agent("h1")
        print(f"agent CPU with nothing happening, {args.seconds:.0f} s each, % of one core:")
        print(f"  following QEMU's events (sweep every 30 s): {following:5.2f} %")
        print(f"  looking at every QEMU each second:          {polling:5.2f} %")


if __name__ == "__main__":
    main()
