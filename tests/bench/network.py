"""Benchmark: VM networks — from attach to the guest's first ping reply, and what one more network
costs a host.

One host whose underlay is this machine's default route (device and address, as `deploy/local.sh up`
chooses) and which is every network's router (so this machine reaches the VMs); the tiny guest under
TCG. For each round:
a new network, `POST /networks/{uuid}/attach` on a running VM (QMP hot-plug), then the time until
the VM's tap is in the network's bridge on the host (the agent's part) and until the address the API
shows answers a ping from the host (adds the guest: it notices the new NIC by polling every 0.5 s for
its first minute, every 2 s after, then SLAAC and duplicate address detection). Then one VM with up
to 8 NICs on 8 networks: devices, processes and nftables rules the host holds per network.

    .venv/bin/python -m tests.bench.network [--rounds 10]

It runs in this machine's network namespace: it adds (and removes) ucb*/ucx*/uct* devices and the
nftables table `ucloud`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.stats import percentile
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_vm.netnames import bridge_name, tap_name


def default_route() -> tuple[str, str]:
    """The device and source address of this machine's default route."""
    route = subprocess.run(["ip", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True)
    words = route.stdout.split()
    return words[words.index("dev") + 1], words[words.index("src") + 1]


def host_counts() -> dict[str, int]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["nft", "-a", "list", "table", "inet", "ucloud"], capture_output=True, text=True).stdout
    return {"devices": sum(f": {prefix}" in line for line in links.splitlines() for prefix in ("ucb", "ucx", "uct")),
            "nft_rules": sum("# handle" in line and ("accept" in line or "drop" in line) for line in rules.splitlines())}


def radvd_processes(cluster: Cluster) -> int:
    """radvd processes of this cluster's host (one per host, whatever the number of networks)."""
    found = subprocess.run(["pgrep", "-f", f"radvd .*{cluster.root}/"], capture_output=True, text=True).stdout
    return len(found.split())


def in_bridge(tap: str, bridge: str) -> bool:
    shown = subprocess.run(["ip", "-o", "link", "show", "dev", tap], capture_output=True, text=True).stdout
    return f"master {bridge} " in shown


def pings(address: str) -> bool:
    return subprocess.run(["ping", "-6", "-c", "1", "-W", "0.2", address], capture_output=True).returncode == 0


def new_network(cluster: Cluster, name: str) -> dict[str, Any]:
    status, network = cluster.call("POST", "/api/v1/networks", {"name": name})
    assert status == 201, network
    return network  # type: ignore[no-any-return]


def attach_rounds(cluster: Cluster, uuid: str, rounds: int) -> tuple[list[float], list[float]]:
    plugged, first_ping = [], []
    for i in range(rounds):
        network = new_network(cluster, f"round{i}")
        start = time.monotonic()
        status, vm = cluster.call("POST", f"/api/v1/networks/{network['uuid']}/attach", {"vm": uuid})
        assert status == 202, vm
        nic = vm["networks"][0]
        wait_until(lambda: in_bridge(tap_name(nic["mac"]), bridge_name(network["vxlan_id"])), 60, "the tap")
        plugged.append(time.monotonic() - start)
        wait_until(lambda: pings(nic["ipv6"]), 120, "the first ping reply")
        first_ping.append(time.monotonic() - start)
        assert cluster.call("POST", f"/api/v1/networks/{network['uuid']}/detach", {"vm": uuid})[0] == 202
        wait_until(lambda: not cluster.vm(uuid)["networks"] and cluster.call(
            "DELETE", f"/api/v1/networks/{network['uuid']}")[0] == 204, 60, "the detach")
    return plugged, first_ping


def per_network_cost(cluster: Cluster, uuid: str, networks: int, before: dict[str, int]) -> dict[str, float]:
    """Devices and rules per network, and the host's radvd processes (one radvd for all networks,
    with its privilege-separated helper: 2 processes). The networks are deleted afterwards."""
    wait_until(lambda: host_counts()["devices"] == before["devices"], 60,
               f"the host to let the last round's network go (devices before: {before}, now: {host_counts()})")
    made = [new_network(cluster, f"cost{i}") for i in range(networks)]
    for network in made:
        assert cluster.call("POST", f"/api/v1/networks/{network['uuid']}/attach", {"vm": uuid})[0] == 202
    wait_until(lambda: host_counts()["devices"] - before["devices"] == 3 * networks, 120, "every network")
    after = host_counts()
    cost = {**{key: (after[key] - before[key]) / networks for key in after},
            "radvd_processes_on_the_host": radvd_processes(cluster)}
    for network in made:
        assert cluster.call("POST", f"/api/v1/networks/{network['uuid']}/detach", {"vm": uuid})[0] == 202
    wait_until(lambda: not cluster.vm(uuid)["networks"], 60, "the detaches")
    for network in made:
        wait_until(lambda: cluster.call("DELETE", f"/api/v1/networks/{network['uuid']}")[0] == 204, 60, "a deletion")
    wait_until(lambda: host_counts()["devices"] == before["devices"], 60, "the host to let every network go")
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        device, address = default_route()
        with running_cluster(Path(tmp) / "cluster", UCLOUD_UNDERLAY_DEVICE=device, UCLOUD_UNDERLAY_ADDRESS=address,
                             UCLOUD_ROUTER="true") as cluster:
            status, vm = cluster.call("POST", "/api/v1/vms", {"name": "bench", "specs": {"cpu": 1, "ram": 0.25,
                                                                                         "ssd": 1}, "image": "tiny"})
            assert status == 201, vm
            uuid = vm["uuid"]
            before = host_counts()  # what other clusters on this machine hold (e.g. `deploy/local.sh up`)
            wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 120, "the guest's boot")
            plugged, first_ping = attach_rounds(cluster, uuid, args.rounds)
            cost = per_network_cost(cluster, uuid, 8, before)
            cluster.call("DELETE", f"/api/v1/vms/{uuid}")
            wait_until(lambda: cluster.call("GET", f"/api/v1/vms/{uuid}")[0] == 404, 60, "the VM's deletion")
    result = {
        "rounds": args.rounds,
        "attach_to_tap_in_bridge_s": {"median": statistics.median(plugged), "p99": percentile(plugged, 99)},
        "attach_to_first_ping_s": {"median": statistics.median(first_ping), "p99": percentile(first_ping, 99)},
        "per_network_on_a_host": cost,
    }
    print(f"{'':32} {'median':>8} {'p99':>8}")
    for label, key in (("attach → tap in the bridge", "attach_to_tap_in_bridge_s"),
                       ("attach → first ping reply", "attach_to_first_ping_s")):
        print(f"{label:32} {result[key]['median']:7.2f}s {result[key]['p99']:7.2f}s")
    print(f"one more network on a host (with one NIC of a VM on it): {cost['devices']:g} devices (bridge, VXLAN, "
          f"tap), {cost['nft_rules']:g} nftables rule(s), a stanza in the host's radvd configuration; "
          f"radvd processes on the host with 8 networks: {cost['radvd_processes_on_the_host']} (one radvd and "
          "its privilege-separated helper)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
