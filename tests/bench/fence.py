"""Benchmark of the RBD fence: how long fencing a dead host takes for 1, 5 and 20 VM disks, each open
by a real idle QEMU (the case the fence exists for: no lock held), fenced in parallel and, for
comparison, one disk at a time (one `fence()` call per disk); and how long an OSD takes to drop a blocklisted client's watch.

Starts its own one-node Ceph (on /dev/shm) and its own QEMUs (TCG, guests paused), and stops them all.
Prints the median (and min–max) of a few runs; a fence's time is from `fence()` being called to its
return, verification included. QEMU start-up is not counted.

    .venv/bin/python -m tests.bench.fence [--sizes 1,5,20] [--runs 3] [--no-serial]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.helpers.ceph import ceph_with_tiny
from tests.helpers.idle_qemu import idle_qemus
from ucloud_common.ceph import Ceph
from ucloud_common.host import Host
from ucloud_common.specs import Specs
from ucloud_scheduler.fencing import FENCE_WORKERS, RBDFence

DEAD = Host(name="dead", capacity=Specs(cpu=1, ram=1, ssd=1))


def fence_seconds(ceph: Ceph, run_dir: Path, uuids: list[str], serial: bool) -> float:
    """Start an idle QEMU per uuid and fence them all: with one call (in parallel), or with one call
    per disk in turn (how the fence worked before: each disk waits for the monitor on its own).
    Return how long fencing took."""
    with idle_qemus(ceph, run_dir, uuids) as olds:
        fence = RBDFence(ceph, "vms")
        batches = [[old.vm] for old in olds] if serial else [[old.vm for old in olds]]
        start = time.perf_counter()
        for batch in batches:
            fence.fence(DEAD, batch)
        return time.perf_counter() - start


def watch_drop_seconds(ceph: Ceph, run_dir: Path, uuid: str) -> tuple[float, float]:
    """For one idle QEMU: seconds from asking for the blocklist entry until the monitors answer, and
    until the OSD no longer lists the QEMU's watch."""
    with idle_qemus(ceph, run_dir, [uuid]):
        clients = ceph.image_clients("vms", uuid)
        assert clients is not None and len(clients.watchers) == 1, clients
        [address] = clients.watchers
        start = time.perf_counter()
        ceph.blocklist_add(address)
        added = time.perf_counter() - start
        while address in (ceph.watchers("vms", uuid) or frozenset()):
            time.sleep(0.01)
        return added, time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(seconds) * 1000), "min_ms": round(min(seconds) * 1000),
            "max_ms": round(max(seconds) * 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,5,20", help="numbers of VM disks per fence")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-serial", action="store_true", help="skip the one-disk-at-a-time comparison")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    modes = {"parallel": False} if args.no_serial else {"parallel": False, "serial": True}
    results: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in modes}
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-fence-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        with ceph_with_tiny(work / "ceph") as ceph:
            drops = [watch_drop_seconds(ceph, work / "run", f"drop-{run}") for run in range(args.runs)]
            for size in sizes:
                for mode, serial in modes.items():
                    times = [fence_seconds(ceph, work / "run", [f"b{size}-{mode[0]}{run}-{i}" for i in range(size)],
                                           serial) for run in range(args.runs)]
                    results[mode][str(size)] = summary(times)
                    print(f"fence of {size:2d} idle disk(s), {mode:8s}: median {results[mode][str(size)]['median_ms']} ms "
                          f"(min {results[mode][str(size)]['min_ms']}, max {results[mode][str(size)]['max_ms']}; "
                          f"{args.runs} runs)", flush=True)
    drop = {"blocklist_add": summary([added for added, _ in drops]), "watch_gone": summary([gone for _, gone in drops])}
    print(f"blocklist add answered after median {drop['blocklist_add']['median_ms']} ms; the OSD dropped the "
          f"watch after median {drop['watch_gone']['median_ms']} ms (from asking)")
    print(json.dumps({"runs": args.runs, "workers": FENCE_WORKERS, "fence": results, "watch_drop": drop}))


if __name__ == "__main__":
    main()
