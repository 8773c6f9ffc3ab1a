"""Benchmark: ucloud's live migration beside a bare pair of QEMUs migrated by hand, and a host's drain
(issue 15, item 6).

A cluster of real processes (etcd, API, scheduler, two agents h1 and h2, a one-node Ceph). One tiny rbd
VM boots and counts on its serial console (`migration_bare.COUNTER`: a tick a tenth of a second, each
also written to its disk), then moves back and forth through `POST /vms/{uuid}/migrate`, one round
per move. Per round: QEMU's own `downtime` and `total-time` (the source agent's event "migrated from …
(downtime N ms, T s in all)", from `query-migrate`), ucloud's end to end (the POST until the VM is
RUNNING on the other host, polled every 50 ms), and whether the guest's counter goes on in the target's
`serial.log` (no reboot, the console still attached). Then the bare pair (`tests.bench.migration_bare`,
its own Ceph) migrates a guest with the same RAM, disk kind and settings (downtime-limit,
max-bandwidth, no pause-before-switchover) for as many rounds; the two are printed side by side. The
guest-visible downtime (the source's STOP to the destination's RESUME) is only measurable on the bare
pair, whose QMP sockets are the benchmark's; ucloud's are its agents'.

Last, the drain: N rbd VMs booted on h1, then `POST /hosts/h1/maintenance {"on": true, "drain": true}`
timed until h1 holds no VM (`GET /hosts/h1` answers `vms`: 0), with each VM's arrival on h2.

    .venv/bin/python -m tests.bench.migration [--rounds 5] [--drain-vms 3] [--max-bandwidth 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import migration_bare as bare
from tests.bench.stats import percentile
from tests.helpers.ceph import CephServer
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.specs import guest_ram_mib

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}
OTHER = {"h1": "h2", "h2": "h1"}
MIGRATED = re.compile(r"migrated from (\w+) to (\w+) \(downtime (\d+) ms, ([\d.]+) s in all\)")


def host_of(vm: dict[str, Any]) -> str:
    return str(vm["hostname"]).rsplit("/", 1)[-1]


def ticks(cluster: Cluster, host: str, uuid: str) -> list[int]:
    return [int(n) for n in bare.TICK.findall(cluster.serial(host, uuid).encode())]


def booted_vm(cluster: Cluster, name: str) -> tuple[str, str]:
    """A tiny rbd VM, RUNNING and its guest booted: (uuid, host)."""
    status, vm = cluster.call("POST", "/api/v1/vms", {"name": name, "image": "tiny-rbd", "storage": "rbd",
                                                       "specs": SPECS})
    assert status == 201, vm
    host = host_of(cluster.wait(vm["uuid"], "RUNNING", timeout=120))
    wait_until(lambda: BOOTED in cluster.serial(host, vm["uuid"]), 180, f"{name}'s guest booted")
    return vm["uuid"], host


def start_counter(cluster: Cluster, host: str, uuid: str) -> None:
    """The bare pair's counter, typed into the guest's serial shell (the socket held open until the
    guest has read it: QEMU drops what the guest's UART has not taken when the client goes)."""
    time.sleep(1)  # its serial shell starts after the boot line

    def counting() -> bool:
        with socket.socket(socket.AF_UNIX) as console:
            console.connect(str(cluster.run_dir(host) / "vms" / uuid / "serial.sock"))
            console.sendall(bare.COUNTER.encode())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if len(ticks(cluster, host, uuid)) >= 5:
                    return True
                time.sleep(0.2)
            return False

    wait_until(counting, 90, "the counter on the serial console")


def migrated_event(cluster: Cluster, uuid: str, source: str, target: str, seen: int) -> dict[str, float] | None:
    """QEMU's figures from the newest "migrated from source to target" event, once there are more than
    `seen` of them; None for an event without figures ("done": QEMU had not computed them yet)."""
    status, events = cluster.call("GET", f"/api/v1/vms/{uuid}/events")
    assert status == 200, events
    moves = sorted((e for e in events if e["message"].startswith(f"migrated from {source} to {target}")),
                   key=lambda e: e["created_at"])
    if len(moves) <= seen:
        raise LookupError("not yet")
    found = MIGRATED.search(moves[-1]["message"])
    return {"downtime_ms": int(found[3]), "total_ms": float(found[4]) * 1000} if found else None


def one_round(cluster: Cluster, uuid: str, source: str) -> dict[str, Any]:
    target = OTHER[source]
    seen = len([e for e in cluster.call("GET", f"/api/v1/vms/{uuid}/events")[1]
                if e["message"].startswith(f"migrated from {source} to {target}")])
    last_on_source = ticks(cluster, source, uuid)[-1]
    started = time.monotonic()
    status, body = cluster.call("POST", f"/api/v1/vms/{uuid}/migrate", {"host": target})
    assert status == 202, body
    on_source: list[int] = []
    while True:
        on_source = ticks(cluster, source, uuid) or on_source  # its files go with its QEMU, once it has left
        vm = cluster.vm(uuid)
        if vm["status"] == "RUNNING" and host_of(vm) == target and vm["migration"] is None:
            break
        if time.monotonic() - started > 120:
            raise AssertionError(f"not RUNNING on {target} within 120 s: {vm['status']} {vm['events'][-3:]}")
        time.sleep(0.05)
    end_to_end = time.monotonic() - started
    qemu: dict[str, float] | None = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            qemu = migrated_event(cluster, uuid, source, target, seen)
            break
        except LookupError:
            time.sleep(0.1)
    # Does the guest go on printing on the target's console? Three new ticks, or not within 20 s.
    counting = time.monotonic()
    new: list[int] = []
    while time.monotonic() - counting < 20:
        new = [t for t in ticks(cluster, target, uuid) if t > last_on_source]
        if len(new) >= 3:
            break
        time.sleep(0.2)
    wait_until(lambda: cluster.qemu_pid(source, uuid) is None, 30, "the source's QEMU to end")
    return {"from": source, "to": target, "qemu_downtime_ms": qemu and qemu["downtime_ms"],
            "qemu_total_ms": qemu and qemu["total_ms"], "end_to_end_s": round(end_to_end, 3),
            "last_tick_before_post": last_on_source, "last_tick_on_source": on_source[-1] if on_source else None,
            "first_ticks_on_target": new[:3],
            "rebooted": BOOTED in cluster.serial(target, uuid).split("tick", 1)[-1] if new else None}


def ucloud_rounds(cluster: Cluster, rounds: int) -> list[dict[str, Any]]:
    uuid, host = booted_vm(cluster, "mover")
    start_counter(cluster, host, uuid)
    results = []
    for number in range(1, rounds + 1):
        record = one_round(cluster, uuid, host)
        print(json.dumps({"ucloud_round": number, **record}), flush=True)
        results.append(record)
        host = record["to"]
        time.sleep(2)  # as the bare pair's --settle
    _delete(cluster, [uuid])
    return results


def drain(cluster: Cluster, count: int) -> dict[str, Any]:
    """`count` VMs booted on h1 (h2 in maintenance meanwhile), then h1 drained: seconds until it holds none."""
    _maintenance(cluster, "h2", {"on": True})
    uuids = [booted_vm(cluster, f"drained-{i}")[0] for i in range(count)]
    _maintenance(cluster, "h2", {"on": False})
    started = time.monotonic()
    _maintenance(cluster, "h1", {"on": True, "drain": True})
    arrived: dict[str, float] = {}
    empty = 0.0
    while not empty or len(arrived) < count:
        if time.monotonic() - started > 300:
            raise AssertionError(f"h1 not drained within 300 s: {len(arrived)} of {count} VMs on h2")
        for uuid in set(uuids) - set(arrived):
            vm = cluster.vm(uuid)
            if vm["status"] == "RUNNING" and host_of(vm) == "h2":
                arrived[uuid] = time.monotonic() - started
        if not empty and cluster.call("GET", "/api/v1/hosts/h1")[1]["vms"] == 0:
            empty = time.monotonic() - started
        time.sleep(0.05)
    _maintenance(cluster, "h1", {"on": False})
    _delete(cluster, uuids)
    return {"vms": count, "empty_s": round(empty, 2), "arrivals_s": sorted(round(t, 2) for t in arrived.values())}


def _maintenance(cluster: Cluster, host: str, body: dict[str, bool]) -> None:
    status, answer = cluster.call("POST", f"/api/v1/hosts/{host}/maintenance", body)
    assert status == 200, answer


def _delete(cluster: Cluster, uuids: list[str]) -> None:
    for uuid in uuids:
        assert cluster.call("DELETE", f"/api/v1/vms/{uuid}")[0] == 202
    wait_until(lambda: all(cluster.call("GET", f"/api/v1/vms/{u}")[0] == 404 for u in uuids), 120, "VMs deleted")


def figures(results: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return (statistics.median(values), percentile(values, 99)) if values else None


def table(ucloud: list[dict[str, Any]], pair: list[dict[str, Any]], settings: argparse.Namespace) -> None:
    print(f"\nlive migration of the tiny guest ({settings.ram} MiB, rbd, TCG), {len(ucloud)} rounds each; "
          f"downtime-limit {settings.downtime_limit} ms, max-bandwidth "
          f"{settings.max_bandwidth or 'no limit'}{' MiB/s' if settings.max_bandwidth else ''}, no pause")
    print(f"{'':<28} {'ucloud p50':>11} {'p99':>8} {'bare p50':>10} {'p99':>8} {'ratio p50':>10}")
    for label, key in (("QEMU downtime (ms)", "qemu_downtime_ms"), ("QEMU total time (ms)", "qemu_total_ms")):
        ours, theirs = figures(ucloud, key), figures(pair, key)
        ratio = f"{ours[0] / theirs[0]:.2f}" if ours and theirs and theirs[0] else "-"
        print(f"{label:<28} {_pair(ours)} {_pair(theirs, 10)} {ratio:>10}")
    print(f"{'guest-visible downtime (ms)':<28} {'-':>11} {'-':>8} {_pair(figures(pair, 'event_downtime_ms'), 10)}")
    end_to_end = figures(ucloud, "end_to_end_s")
    print(f"{'end to end, API (ms)':<28} {_pair(end_to_end and (end_to_end[0] * 1000, end_to_end[1] * 1000))}")


def _pair(values: tuple[float, float] | None, width: int = 11) -> str:
    return f"{values[0]:>{width}.0f} {values[1]:>8.0f}" if values else f"{'-':>{width}} {'-':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drain-vms", type=int, default=3)
    parser.add_argument("--max-bandwidth", type=int, default=0, help="MiB/s for both, 0: no limit (ucloud's default)")
    args = parser.parse_args()
    # The bare pair's own defaults (downtime-limit, no pause), with this run's rounds, RAM and bandwidth.
    settings = bare.arguments().parse_args(["--rounds", str(args.rounds), "--rbd", "--max-bandwidth",
                                            str(args.max_bandwidth), "--ram", str(guest_ram_mib(SPECS["ram"]))])
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        ceph = CephServer(Path(tmp) / "ceph")
        ceph.start()
        try:
            with running_cluster(Path(tmp) / "cluster", hosts=("h1", "h2"), UCLOUD_CEPH_CONF=str(ceph.conf),
                                 UCLOUD_MIGRATION_DOWNTIME_MS=str(settings.downtime_limit),
                                 UCLOUD_MIGRATION_BANDWIDTH_MIB=str(settings.max_bandwidth)) as cluster:
                wait_until(lambda: all("rbd" in cluster.call("GET", f"/api/v1/hosts/{h}")[1].get(
                    "storage_backends", []) for h in ("h1", "h2")), 60, "both hosts offering rbd")
                ucloud = ucloud_rounds(cluster, args.rounds)
                drained = drain(cluster, args.drain_vms)
        finally:
            ceph.stop()
    pair = asyncio.run(bare.run(settings))  # after: never two Cephs, nor the cluster's QEMUs, beside it
    table(ucloud, pair, settings)
    print(f"\ndrain of h1 ({drained['vms']} running rbd VMs, UCLOUD_MIGRATIONS_PER_HOST 2): empty after "
          f"{drained['empty_s']:.1f} s; each RUNNING on h2 after {', '.join(f'{t:.1f}' for t in drained['arrivals_s'])} s")
    print(json.dumps({"ucloud": ucloud, "bare": [{k: r[k] for k in ("qemu_downtime_ms", "qemu_total_ms",
                                                                    "event_downtime_ms")} for r in pair],
                      "drain": drained}))


if __name__ == "__main__":
    main()
