"""Two hosts on local storage, the image in one host's store only: a VM the scheduler can place only
on the other boots there, its agent having fetched the image from the first (real agents, scheduler,
API and QEMU; the hosts' image servers on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.host import HOSTS
from ucloud_common.imagestore import local_image_path


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("two-stores")
    with running_cluster(root, hosts=(), UCLOUD_IMAGE_SECRET="e2e-" + "x" * 32, UCLOUD_IMAGE_PORT="0") as cluster:
        # h1 holds the tiny image (imported into the cluster's UCLOUD_IMAGE_DIR) but has no room for
        # the VM; h2 has room and an empty store of its own.
        cluster.start_agent("h1", ram="0.2")
        cluster.start_agent("h2", ram="1", **{"image-dir": str(root / "h2-images")})
        yield cluster


def test_a_vm_boots_on_a_host_that_fetched_its_image(two_stores: Cluster) -> None:
    cluster = two_stores
    wait_until(lambda: all((h := cluster.store.get(HOSTS, name)) is not None and h.value.image_url
                           for name in ("h1", "h2")), 30, "both hosts serving images")
    assert cluster.store.get(HOSTS, "h2").value.images == ()  # type: ignore[union-attr]
    status, body = cluster.call("POST", "/api/v1/vms", {"name": "far", "specs": {"cpu": 1, "ram": 0.25, "ssd": 1},
                                                        "image": "tiny"})
    assert status == 201, body
    vm = cluster.wait(body["uuid"], "RUNNING", timeout=90)
    assert vm["hostname"] == "/v1/host/h2"
    wait_until(lambda: BOOTED in cluster.serial("h2", vm["uuid"]), 60, "the guest's serial line on h2")
    fetched = local_image_path(cluster.root / "h2-images", "tiny")
    assert fetched.read_bytes() == (tiny_image() / "tiny.raw").read_bytes()
    wait_until(lambda: cluster.store.get(HOSTS, "h2").value.images == ("tiny",), 15,  # type: ignore[union-attr]
               "h2 listing the image it fetched")
