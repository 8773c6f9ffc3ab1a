"""What the end-to-end tests that log into a VM share: a cluster whose one agent routes VM networks
over this machine's default route, the CLI as a user runs it, and ssh as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.processes import Cluster, running_cluster, wait_until
from ucloud_vm.netnames import bridge_name, tap_name, vxlan_name

SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
       "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def default_route() -> tuple[str, str]:
    route = subprocess.run(["ip", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=False)
    words = route.stdout.split()
    if route.returncode != 0 or "src" not in words:
        pytest.skip("this machine has no default route to carry VM networks")
    return words[words.index("dev") + 1], words[words.index("src") + 1]


@contextmanager
def router_cluster(root: Path) -> Iterator[Cluster]:
    """One host, this machine in its own network namespace, the router of every network. A test file
    that uses it is in tests/helpers/xdist_scheduling.py's GROUPS, so that no other such cluster runs
    beside it in the other worker (tests/unit/test_two_workers.py checks)."""
    device, address = default_route()
    with running_cluster(root, UCLOUD_UNDERLAY_DEVICE=device, UCLOUD_UNDERLAY_ADDRESS=address,
                         UCLOUD_ROUTER="true") as the_cluster:
        yield the_cluster


def ucloud(cluster: Cluster, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")},
           "UCLOUD_API_URL": f"http://127.0.0.1:{cluster.api_port}", "UCLOUD_TOKEN": cluster.token}
    done = subprocess.run([str(Path(sys.executable).parent / "ucloud"), *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def key_laptop_and_network_net(cluster: Cluster, tmp_path: Path) -> Path:
    """A new SSH key pair in `tmp_path`, its public half added as the user's key `laptop`, and a
    network `net`: what a user makes before their first VM. Returns the private key's path."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ucloud(cluster, "ssh-key", "add", "laptop", str(key.with_suffix(".pub")))
    ucloud(cluster, "network", "create", "net")
    return key


def ssh_output(key: Path, address: str, command: str) -> str:
    """What `command` prints run as root on `address` with `key`; "" if ssh fails (not up yet)."""
    done = subprocess.run([*SSH, "-i", str(key), f"root@{address}", command], capture_output=True, text=True,
                          timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def devices_of(cluster: Cluster, network: str, mac: str) -> list[str]:
    """Which of network `network`'s bridge and VXLAN device and the tap of NIC `mac` exist here (by
    name: another cluster in this namespace has its own)."""
    vni = json.loads(ucloud(cluster, "network", "show", network, "-o", "json"))["vxlan_id"]
    return sorted(_links() & {bridge_name(vni), vxlan_name(vni), tap_name(mac)})


def delete_and_check_nothing_is_left(cluster: Cluster, vm: str, network: str, mac: str) -> None:
    """Delete the VM and its network; the router host lets the network's devices go."""
    mine = devices_of(cluster, network, mac)
    assert len(mine) == 3, mine  # while the VM runs: bridge, VXLAN, tap
    ucloud(cluster, "vm", "delete", vm, "--wait")
    ucloud(cluster, "network", "delete", network)
    wait_until(lambda: not set(mine) & _links(), 60, "the router host to let the network go")


def _links() -> set[str]:
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    return {line.split(": ")[1].split("@")[0] for line in shown.splitlines() if ": " in line}
