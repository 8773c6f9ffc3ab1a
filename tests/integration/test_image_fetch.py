"""Images between hosts: a host whose local store lacks a VM's image fetches it from a host serving it
(ucloud_vm/peerimages.py, ucloud_vm/imageserver.py), over real HTTP on loopback, with the hosts and
the image in a real etcd; the VM's agent on the fake hypervisor."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cluster import register_host, vm, wait_for
from tests.helpers.etcd import free_port
from tests.integration.test_follow import a_vm
from tests.integration.test_supervision import Running
from tests.unit.test_contentdigest import by_hand
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.imagestore import local_image_path
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import KeptLease, Store
from ucloud_common.vm import VMS, placed_on
from ucloud_vm import imagetoken
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.fake_driver import FakeDriver
from ucloud_vm.imageserver import ImageServer, image_path
from ucloud_vm.peerimages import ImageUnavailable, PeerImages
from ucloud_vm.storage import LocalStorage

SECRET = "s" * 32
MIB = 1024 * 1024


def image_bytes() -> bytes:
    """12 MiB: random, a 4 MiB run of zeros (a hole the fetch must keep), random."""
    return os.urandom(4 * MIB) + bytes(4 * MIB) + os.urandom(4 * MIB)


@dataclass
class Peers:
    store: Store
    data: bytes
    source: Path  # h1's image store, which holds "img"
    target: Path  # h2's, which does not
    server: ImageServer
    lease: KeptLease

    def serve_at(self, url: str) -> None:
        """Say in h1's host record that it serves its images at `url`."""
        self.store.update(HOSTS, "h1", lambda h: h.evolve(images=("img",), image_url=url))

    def fetcher(self, **changes: object) -> PeerImages:
        return PeerImages(self.store, self.target, "h2", **{"secret": SECRET, "timeout": 5.0, **changes})  # type: ignore[arg-type]


@pytest.fixture
def peers(store: Store, tmp_path: Path) -> Iterator[Peers]:
    data = image_bytes()
    source, target = tmp_path / "h1-images", tmp_path / "h2-images"
    source.mkdir()
    target.mkdir()
    local_image_path(source, "img").write_bytes(data)
    local_image_path(source, "img").chmod(0o444)
    store.create(IMAGES, "img", Image(uuid="img", owner="alice", name="img", store_name="local",
                                      status=ImageStatus.CREATED, size=len(data),
                                      digest=by_hand(data)))
    lease = register_host(store, "h1")
    server = ImageServer(source, SECRET, "127.0.0.1", 0, timeout=5.0)
    server.start()
    the_peers = Peers(store, data, source, target, server, lease)
    the_peers.serve_at(server.url)
    try:
        yield the_peers
    finally:
        server.close()
        lease.close()


def test_an_agent_fetches_the_image_its_vm_needs_and_starts_it(peers: Peers, quick: Settings, tmp_path: Path) -> None:
    store = peers.store
    agent = Agent(store, quick, HostSpec("h2", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10)), FakeDriver(),
                  {"local": LocalStorage(peers.target, tmp_path / "disks")}, images=peers.fetcher())
    store.create(VMS, "vm1", a_vm("vm1").evolve(image="img", status=Status.SCHEDULED_DEPLOY, **placed_on("h2")))
    running = Running(agent.run)
    try:
        wait_for(lambda: vm(store, "vm1").status is Status.RUNNING, 30, "vm1 running on h2")
        # Reported at once, for the scheduler to send the image's next VMs here without a fetch.
        wait_for(lambda: store.get(HOSTS, "h2").value.images == ("img",), 5, "h2 listing img")  # type: ignore[union-attr]
    finally:
        running.end()
    fetched = local_image_path(peers.target, "img")
    assert fetched.read_bytes() == peers.data
    assert fetched.stat().st_mode & 0o222 == 0, "an image is read-only"
    assert fetched.stat().st_blocks * 512 <= 9 * MIB, "the run of zeros was written as a hole"
    assert not list((peers.target / ".fetching").iterdir())


def test_a_broken_transfer_resumes_where_it_stopped(peers: Peers) -> None:
    proxy = BreakingProxy(peers.server.url, cut_after=5 * MIB)
    peers.serve_at(proxy.url)
    fetched = peers.fetcher().ensure("img")
    assert fetched is not None and fetched.peer == "h1"
    assert local_image_path(peers.target, "img").read_bytes() == peers.data
    assert proxy.requests == 2, "the break was resumed by a second request"
    first, resumed = proxy.ranges
    assert first is None and resumed is not None, proxy.ranges
    # Cut after 5 MiB of answer, its headers included: resumed a few hundred bytes before 5 MiB.
    assert 5 * MIB - 1024 < int(resumed.removeprefix("bytes=").removesuffix("-")) < 5 * MIB, resumed
    assert fetched.received == len(peers.data), "no byte was fetched twice"


def test_an_agent_restarted_mid_fetch_asks_only_for_the_rest(peers: Peers) -> None:
    partial = peers.target / ".fetching" / "img.part"
    partial.parent.mkdir()
    partial.write_bytes(peers.data[:3 * MIB])
    fetched = peers.fetcher().ensure("img")
    assert fetched is not None and (fetched.resumed_at, fetched.received) == (3 * MIB, 9 * MIB)
    assert local_image_path(peers.target, "img").read_bytes() == peers.data


def test_a_corrupted_transfer_never_becomes_an_image(peers: Peers, quick: Settings, tmp_path: Path) -> None:
    source = local_image_path(peers.source, "img")
    source.chmod(0o644)
    with open(source, "r+b") as file:  # h1's copy damaged after the digest was recorded
        file.seek(10 * MIB)
        file.write(b"\xff")
    agent = Agent(peers.store, quick, HostSpec("h2", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10)), FakeDriver(),
                  {"local": LocalStorage(peers.target, tmp_path / "disks")}, images=peers.fetcher())
    peers.store.create(VMS, "vm1", a_vm("vm1").evolve(image="img", status=Status.SCHEDULED_DEPLOY,
                                                      **placed_on("h2")))
    step = agent.reconcile("vm1")
    assert step.look_again and step.look_again > 0, "the VM is looked at again later"
    waiting = vm(peers.store, "vm1")
    assert waiting.status is Status.STARTING and waiting.deadline is not None, "no crash counted, no ERROR"
    assert waiting.error == ("image img could not be fetched: h1: what it sent does not match the image's digest "
                             "(damaged in transfer, or its copy is damaged): thrown away")
    assert not local_image_path(peers.target, "img").exists()
    assert not list((peers.target / ".fetching").iterdir()), "nothing of the transfer is kept"
    assert not (tmp_path / "disks" / "vm1.qcow2").exists()


def test_without_a_live_host_serving_it_the_vm_waits_with_the_reason(peers: Peers) -> None:
    peers.lease.close()  # h1's agent is gone
    wait_for(lambda: not peers.fetcher()._peers("img"), 15, "h1 no longer alive")
    with pytest.raises(ImageUnavailable, match="image img is not here and no live host serves it"):
        peers.fetcher().ensure("img")


def test_the_image_server_answers_only_a_signed_request_for_an_image_it_holds(peers: Peers) -> None:
    now = time.time()
    good = imagetoken.sign(SECRET, "img", now)

    def get(path: str, token: str | None, **headers: str) -> tuple[int, bytes]:
        host, port = peers.server.url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        if token is not None:
            headers["Authorization"] = f"{imagetoken.SCHEME} {token}"
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    assert get(image_path("img"), good, Range=f"bytes={len(peers.data) - 3}-") == (206, peers.data[-3:])
    refused = {
        "no token": get(image_path("img"), None),
        "another secret": get(image_path("img"), imagetoken.sign("t" * 32, "img", now)),
        "another image's token": get(image_path("img"), imagetoken.sign(SECRET, "other", now)),
        "expired": get(image_path("img"), imagetoken.sign(SECRET, "img", now - 2 * imagetoken.LIFETIME)),
        "from far ahead": get(image_path("img"), imagetoken.sign(SECRET, "img", now + 10 * imagetoken.LIFETIME)),
        "not a name": get(image_path(".."), good),
        "not here": get(image_path("other"), imagetoken.sign(SECRET, "other", now)),
        "past the end": get(image_path("img"), good, Range=f"bytes={len(peers.data) + 1}-"),
    }
    os.symlink("/etc/passwd", local_image_path(peers.source, "link"))
    refused["a link"] = get(image_path("link"), imagetoken.sign(SECRET, "link", now))
    statuses = {what: status for what, (status, _) in refused.items()}
    assert statuses == {"no token": 401, "another secret": 403, "another image's token": 403, "expired": 403,
                        "from far ahead": 403, "not a name": 400, "not here": 404, "past the end": 416,
                        "a link": 404}
    for what, (_, body) in refused.items():
        assert json.loads(body)["error"], what


class BreakingProxy:
    """A TCP proxy in front of an image server that cuts its first connection after `cut_after`
    bytes of the answer (a transfer breaking mid-way), and passes the later ones whole."""

    def __init__(self, target_url: str, cut_after: int) -> None:
        host, port = target_url.removeprefix("http://").rsplit(":", 1)
        self._target = (host, int(port))
        self._cut_after = cut_after
        self.requests = 0
        self.ranges: list[str | None] = []
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            self.requests += 1
            threading.Thread(target=self._serve, args=(client, self.requests == 1), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(self._target)
        request = client.recv(65536)
        headers = request.decode(errors="replace").split("\r\n")
        self.ranges.append(next((h.split(": ", 1)[1] for h in headers if h.lower().startswith("range:")), None))
        upstream.sendall(request)
        sent = 0
        while data := upstream.recv(65536):
            if cut and sent + len(data) > self._cut_after:
                client.sendall(data[:self._cut_after - sent])
                break
            client.sendall(data)
            sent += len(data)
        client.close()
        upstream.close()


def test_a_deleted_images_file_leaves_every_host_but_where_a_disk_is_made_from_it(peers: Peers, quick: Settings,
                                                                                 tmp_path: Path) -> None:
    store = peers.store
    for image in ("kept", "deleted", "base-of-a-disk"):
        local_image_path(peers.target, image).write_bytes(b"x")
    (peers.target / ".fetching").mkdir()
    (peers.target / ".fetching" / "deleted-too.part").write_bytes(b"x")
    (peers.target / ".fetching" / "img.part").write_bytes(b"x")  # a transfer of an image that exists
    store.create(IMAGES, "kept", Image(uuid="kept", owner="alice", name="kept", store_name="local"))
    agent = Agent(store, quick, HostSpec("h2", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10)), FakeDriver(),
                  {"local": LocalStorage(peers.target, tmp_path / "disks")}, images=peers.fetcher())
    # Its image deleted meanwhile (a race the API's check cannot close): the VM's disk still reads it.
    store.create(VMS, "vm1", a_vm("vm1").evolve(image="base-of-a-disk", status=Status.SCHEDULED_DEPLOY,
                                                **placed_on("h2")))
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(HOSTS, "h2") is not None and vm(store, "vm1").status is not Status.SCHEDULED_DEPLOY,
                 15, "h2 registered and working on vm1")
        agent.remove_deleted_images()
        wait_for(lambda: store.get(HOSTS, "h2").value.images == ("base-of-a-disk", "kept"), 5,  # type: ignore[union-attr]
                 "h2 no longer listing the deleted image")
    finally:
        running.end()
    assert sorted(p.name for p in peers.target.iterdir() if p.is_file()) == ["base-of-a-disk.raw", "kept.raw"]
    assert [p.name for p in (peers.target / ".fetching").iterdir()] == ["img.part"]
