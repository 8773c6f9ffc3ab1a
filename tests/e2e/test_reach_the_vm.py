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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Cluster, wait_until
from tests.helpers.reach import (
    delete_and_check_nothing_is_left,
    key_laptop_and_network_net,
    router_cluster,
    ssh_output,
    ucloud,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("radvd", "ssh", "nft")),
                                reason="needs root, radvd, openssh-client, nftables")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with router_cluster(tmp_path_factory.mktemp("reach")) as the_cluster:
        yield the_cluster


def test_the_owner_logs_into_a_new_vm_at_the_address_ucloud_shows(cluster: Cluster, tmp_path: Path) -> None:
    key = key_laptop_and_network_net(cluster, tmp_path)
    ucloud(cluster, "vm", "create", "web", "--image", "tiny", "--ram", "0.25", "--ssd", "1", "--network", "net",
           "--ssh-key", "laptop", "--wait")
    (nic,) = json.loads(ucloud(cluster, "vm", "show", "web", "-o", "json"))["networks"]
    assert nic["ipv6"] in ucloud(cluster, "vm", "show", "web") and nic["error"] == ""

    wait_until(lambda: ssh_output(key, nic["ipv6"], "hostname") == "web", 120,
               "ssh root@<the address ucloud vm show prints>")

    delete_and_check_nothing_is_left(cluster, "web", "net", nic["mac"])
