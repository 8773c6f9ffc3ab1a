"""A VM on the rbd backend, end to end: it boots the tiny image from its clone and is cleaned up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ceph import CephServer
from tests.helpers.processes import BIN, Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.ceph import Ceph


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ceph_server: CephServer) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("rbd-cluster"), UCLOUD_CEPH_CONF=str(ceph_server.conf)) as c:
        yield c


def test_a_vm_boots_from_its_rbd_clone_and_leaves_nothing(cluster: Cluster, ceph_server: CephServer) -> None:
    subprocess.run([str(BIN / "ucloud-vm"), "import-image", str(tiny_image() / "tiny.qcow2"), "--name", "tiny-rbd",
                    "--uuid", "tiny-rbd", "--store", "images"], env=cluster.env, check=True, capture_output=True)
    wait_until(lambda: "rbd" in cluster.call("GET", "/api/v1/hosts/h1")[1].get("storage_backends", []), 20,
               "h1 offering rbd")
    status, vm = cluster.call("POST", "/api/v1/vms", {"name": "on-ceph", "image": "tiny-rbd", "storage": "rbd",
                                                       "specs": {"cpu": 1, "ram": 0.25, "ssd": 1}})
    assert status == 201, vm
    uuid = vm["uuid"]
    cluster.wait(uuid, "RUNNING", timeout=60)
    wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 60, "the serial line")
    ceph = Ceph(ceph_server.conf)
    try:
        assert ceph.exists("vms", uuid)
        pid = (cluster.run_dir("h1") / "vms" / uuid / "qemu.pid").read_text().strip()
        assert f"file=rbd:vms/{uuid}:conf=".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        cluster.call("DELETE", f"/api/v1/vms/{uuid}")
        wait_until(lambda: cluster.call("GET", f"/api/v1/vms/{uuid}")[0] == 404, 60, "deletion")
        assert not ceph.exists("vms", uuid)
        assert not (cluster.run_dir("h1") / "vms" / uuid).exists()
    finally:
        ceph.close()
