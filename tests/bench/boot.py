"""Benchmark: what ucloud costs on top of QEMU when booting a VM.

Side by side in one run, on the tiny test image under TCG:
(a) a bare `qemu-system-x86_64` booting the image to its first serial line, and
(b) ucloud doing the same from POST /api/v1/vms (API, scheduler, agent, disk creation, QEMU start):
    the time to status RUNNING and to the first serial line.
Median and p99 over N VMs each (one at a time, so the two measure the same thing).

    .venv/bin/python -m tests.bench.boot [--vms 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench.stats import percentile
from tests.helpers.processes import running_cluster, wait_until
from tests.helpers.tiny import BOOTED, tiny_image


def bare_boot(image: Path, work: Path, i: int) -> float:
    serial = work / f"bare-{i}.log"
    start = time.monotonic()
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none", "-no-shutdown",
         "-chardev", f"file,id=s,path={serial}", "-serial", "chardev:s",
         "-drive", f"file={image},format=qcow2,if=virtio,snapshot=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: serial.exists() and BOOTED in serial.read_text(errors="replace"), 60, "bare boot")
        return time.monotonic() - start
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=20)
    args = parser.parse_args()
    image = tiny_image() / "tiny.qcow2"
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        bare = [bare_boot(image, work, i) for i in range(args.vms)]
        running, serial = [], []
        with running_cluster(work / "cluster") as cluster:
            specs = {"cpu": 1, "ram": 0.25, "ssd": 1}
            for i in range(args.vms):
                start = time.monotonic()
                status, vm = cluster.call("POST", "/api/v1/vms", {"name": f"b{i}", "specs": specs, "image": "tiny"})
                assert status == 201, vm
                uuid = vm["uuid"]
                wait_until(lambda: cluster.vm(uuid)["status"] == "RUNNING", 60, "RUNNING")
                running.append(time.monotonic() - start)
                wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 60, "the serial line")
                serial.append(time.monotonic() - start)
                cluster.call("DELETE", f"/api/v1/vms/{uuid}")
                wait_until(lambda: cluster.call("GET", f"/api/v1/vms/{uuid}")[0] == 404, 60, "deletion")
    result = {
        "vms": args.vms,
        "bare_qemu_to_serial_s": {"median": statistics.median(bare), "p99": percentile(bare, 99)},
        "ucloud_post_to_running_s": {"median": statistics.median(running), "p99": percentile(running, 99)},
        "ucloud_post_to_serial_s": {"median": statistics.median(serial), "p99": percentile(serial, 99)},
    }
    overhead = statistics.median(serial) - statistics.median(bare)
    print(f"{'':32} {'median':>8} {'p99':>8}")
    for label, key in (("bare QEMU → serial line", "bare_qemu_to_serial_s"),
                       ("ucloud POST → RUNNING", "ucloud_post_to_running_s"),
                       ("ucloud POST → serial line", "ucloud_post_to_serial_s")):
        print(f"{label:32} {result[key]['median']:7.2f}s {result[key]['p99']:7.2f}s")
    print(f"ucloud's cost over bare QEMU (medians): {overhead:+.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
