"""The quick start's promise, end to end on real parts: with the CLI, a user makes a network and a VM
on it with their SSH key, and logs into the VM at the address `ucloud vm show` prints, from the
router host. One host (an agent process with VM networking over this machine's default route, the
router of every network), a real etcd, API and scheduler, the tiny guest under TCG.

It runs in the test machine's own network namespace (as `deploy/local.sh up` does): it makes and
removes ucb*/ucx*/uct* devices and the nftables table `ucloud`, and leaves none behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Cluster, running_cluster, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("radvd", "ssh", "nft")),
                                reason="needs root, radvd, openssh-client, nftables")
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
       "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def default_route() -> tuple[str, str]:
    route = subprocess.run(["ip", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    words = route.stdout.split()
    if route.returncode != 0 or "src" not in words:
        pytest.skip("this machine has no default route to carry VM networks")
    return words[words.index("dev") + 1], words[words.index("src") + 1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    device, address = default_route()
    with running_cluster(tmp_path_factory.mktemp("reach"), UCLOUD_UNDERLAY_DEVICE=device,
                         UCLOUD_UNDERLAY_ADDRESS=address, UCLOUD_ROUTER="true") as the_cluster:
        yield the_cluster


def ucloud(cluster: Cluster, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")},
           "UCLOUD_API_URL": f"http://127.0.0.1:{cluster.api_port}", "UCLOUD_TOKEN": cluster.token}
    done = subprocess.run([str(Path(sys.executable).parent / "ucloud"), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def devices() -> str:
    return "\n".join(line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                     .splitlines() if any(f": {p}" in line for p in ("ucb", "ucx", "uct")))


def test_the_owner_logs_into_a_new_vm_at_the_address_ucloud_shows(cluster: Cluster, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    before = devices()
    ucloud(cluster, "ssh-key", "add", "laptop", str(key.with_suffix(".pub")))
    ucloud(cluster, "network", "create", "net")
    ucloud(cluster, "vm", "create", "web", "--image", "tiny", "--ram", "0.25", "--ssd", "1", "--network", "net",
           "--ssh-key", "laptop", "--wait")
    (nic,) = json.loads(ucloud(cluster, "vm", "show", "web", "-o", "json"))["networks"]
    assert nic["ipv6"] in ucloud(cluster, "vm", "show", "web") and nic["error"] == ""

    def login() -> str:
        done = subprocess.run([*SSH, "-i", str(key), f"root@{nic['ipv6']}", "hostname"], capture_output=True,
                              text=True, timeout=60)
        return done.stdout.strip() if done.returncode == 0 else ""

    wait_until(lambda: login() == "web", 120, "ssh root@<the address ucloud vm show prints>")

    ucloud(cluster, "vm", "delete", "web", "--wait")
    ucloud(cluster, "network", "delete", "net")
    wait_until(lambda: devices() == before, 60, "the router host to let the network go")
