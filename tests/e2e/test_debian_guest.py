"""Compatibility with real cloud images, end to end: a stock Debian 12 with cloud-init and
openssh-server (built offline from Debian packages by deploy/build-debian-image.sh, nothing of
ucloud's inside) boots as a ucloud VM from its disk, takes its network from the cidata drive and
the router's advertisements, and lets its owner in as root at the address `ucloud vm show` prints.

Slow: building the image takes a minute or two the first time on a machine, and the boot to
cloud-init's final stage one to three minutes under TCG. Like test_reach_the_vm, it runs in the
test machine's own network namespace, with this machine as the router host; so it cannot share
that namespace with another cluster's agent at the same time (say a second test run): an agent
removes every ucb*/ucx* device whose VNI its own etcd does not know, the guest's bridge included."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import BIN, Cluster, wait_until
from tests.helpers.reach import (
    delete_and_check_nothing_is_left,
    key_laptop_and_network_net,
    router_cluster,
    ssh_output,
    ucloud,
)
from tests.helpers.tiny import debian_image

TOOLS = ("radvd", "ssh", "nft", "mmdebstrap", "sfdisk", "mkfs.ext4", "syslinux")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
                                reason=f"needs root and {', '.join(TOOLS)}")
# Cloud-init's last line on the console (Debian's cloud-final.service writes to journal+console).
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = time.monotonic()
    image = debian_image() / "debian.qcow2"
    print(f"\nDebian image ready in {time.monotonic() - started:.0f} s")
    with router_cluster(tmp_path_factory.mktemp("debian")) as the_cluster:
        subprocess.run([str(BIN / "ucloud-vm"), "import-image", str(image), "--name", "debian", "--uuid", "debian"],
                       env=the_cluster.env, check=True, capture_output=True)
        yield the_cluster


# Beyond the suite's 300 s: a first build (≈ 1.5–3 min) and a TCG boot (≈ 2–4 min) under load.
@pytest.mark.timeout(1800)
def test_a_stock_debian_guest_lets_its_owner_in_as_root(cluster: Cluster, tmp_path: Path) -> None:
    key = key_laptop_and_network_net(cluster, tmp_path)
    started = time.monotonic()
    ucloud(cluster, "vm", "create", "deb", "--image", "debian", "--ram", "1", "--ssd", "2", "--network", "net",
           "--ssh-key", "laptop", "--wait")
    vm = json.loads(ucloud(cluster, "vm", "show", "deb", "-o", "json"))
    (nic,) = vm["networks"]

    # One login tells the host name and eth0's addresses: each new ssh into a TCG guest on a loaded machine
    # waits for sshd's fork and key exchange, and a second login right after cloud-init's final stage once
    # missed ssh's ConnectTimeout (5 s, which covers the handshake too) with the suite in two workers.
    answers: list[str] = []

    def logged_in() -> bool:
        answers.append(ssh_output(key, nic["ipv6"], "hostname; ip -6 -o addr show dev eth0"))
        return answers[-1].startswith("deb\n")

    wait_until(logged_in, 600, "ssh root@<the address ucloud vm show prints> into the Debian guest")
    print(f"Debian guest: ssh as root after {time.monotonic() - started:.0f} s")
    wait_until(lambda: FINISHED.search(cluster.serial("h1", vm["uuid"])), 300, "cloud-init's final stage")
    print(f"Debian guest: cloud-init final after {time.monotonic() - started:.0f} s")
    # The address is the one cloud-init was told to configure, on the NIC it named by MAC.
    assert nic["ipv6"] in answers[-1], answers[-1]

    delete_and_check_nothing_is_left(cluster, "deb", "net", nic["mac"])
