"""Three hosts on local storage, the image in one host's store only (the one image-scanner writes to,
with no room for a VM): a VM boots on another, its agent having fetched the image from the first
(real agents, scheduler, API, jobs, CLI and QEMU; the hosts' image servers on loopback)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import BIN, as_json, ok, ucloud
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.host import HOSTS
from ucloud_common.imagestore import local_image_path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("stores")
    with running_cluster(root, hosts=(), UCLOUD_IMAGE_SECRET="e2e-" + "x" * 32, UCLOUD_IMAGE_PORT="0") as cluster:
        # h1 holds the images (the cluster's UCLOUD_IMAGE_DIR, where image-scanner makes them) but has
        # no room for a VM; h2 and h3 have room and empty stores of their own.
        cluster.start_agent("h1", ram="0.2")
        for name in ("h2", "h3"):
            cluster.start_agent(name, ram="1", **{"image-dir": str(root / f"{name}-images")})
        yield cluster


def test_a_vm_boots_on_a_host_that_fetched_its_image(stores: Cluster) -> None:
    cluster = stores
    wait_until(lambda: all((h := cluster.store.get(HOSTS, name)) is not None and h.value.image_url
                           for name in ("h1", "h2", "h3")), 30, "every host serving images")
    assert {cluster.store.get(HOSTS, n).value.images for n in ("h2", "h3")} == {()}  # type: ignore[union-attr]
    status, body = cluster.call("POST", "/api/v1/vms", {"name": "far", "specs": {"cpu": 1, "ram": 0.25, "ssd": 1},
                                                        "image": "tiny"})
    assert status == 201, body
    vm = cluster.wait(body["uuid"], "RUNNING", timeout=90)
    host = vm["hostname"].rpartition("/")[2]
    assert host in ("h2", "h3")
    wait_until(lambda: BOOTED in cluster.serial(host, vm["uuid"]), 60, f"the guest's serial line on {host}")
    fetched = local_image_path(cluster.root / f"{host}-images", "tiny")
    assert fetched.read_bytes() == (tiny_image() / "tiny.raw").read_bytes()
    wait_until(lambda: cluster.store.get(HOSTS, host).value.images == ("tiny",), 15,  # type: ignore[union-attr]
               f"{host} listing the image it fetched")
    assert cluster.call("DELETE", f"/api/v1/vms/{vm['uuid']}")[0] == 202


def test_a_user_without_a_shell_uploads_makes_an_image_and_runs_it_on_any_host(stores: Cluster, tmp_path: Path) -> None:
    """The issue's chain on three hosts with local storage: `ucloud file upload` → `ucloud image
    create` → `ucloud vm create --image NAME`, for VMs that land where the image is not."""
    cluster = stores
    token = as_json(ucloud(tmp_path, "user", "create", "una", "-o", "json", cluster=cluster))["token"]
    ok(ucloud(tmp_path, "file", "upload", str(tiny_image() / "tiny.qcow2"), "--name", "mine.qcow2",
              cluster=cluster, token=token))
    for job in ("ucloud-filescan", "ucloud-imagescanner"):
        if job == "ucloud-imagescanner":
            ok(ucloud(tmp_path, "image", "create", "mine", "--file", "mine.qcow2", cluster=cluster, token=token))
        ran = subprocess.run([str(BIN / job), "run"], env=cluster.env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
    vms = [as_json(ucloud(tmp_path, "vm", "create", f"m{i}", "--ram", "0.25", "--ssd", "1", "--image", "mine",
                          "--wait", "--timeout", "120", "-o", "json", cluster=cluster, token=token))
           for i in range(2)]
    assert all(vm["status"] == "RUNNING" and vm["hostname"] in ("/v1/host/h2", "/v1/host/h3") for vm in vms)
    for vm in vms:
        host = vm["hostname"].rpartition("/")[2]
        wait_until(lambda: BOOTED in cluster.serial(host, vm["uuid"]), 60, f"{vm['name']}'s guest on {host}")
