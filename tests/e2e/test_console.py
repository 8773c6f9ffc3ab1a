"""Consoles end to end on real parts: the API gives a one-time ticket, the host's console proxy (its
own process) takes it over a websocket, and the bytes are the VM's — typing into the tiny guest's
serial shell, the RFB greeting of its VNC server. A used, wrong-kind or other host's ticket is
refused with a reason."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers.etcd import free_port
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.console import TICKETS, ConsoleKind, ConsoleTicket, new_ticket

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("console")
    with running_cluster(root, UCLOUD_CONSOLE_PORT=str(free_port())) as the_cluster:
        the_cluster.start_console_proxy("h1")
        yield the_cluster


def ticket(cluster: Cluster, uuid: str, kind: str) -> dict[str, str]:
    status, body = cluster.call("POST", f"/api/v1/vms/{uuid}/console", {"type": kind})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def refusal(url: str) -> str:
    """The reason the proxy closes a connection to `url` with, at once."""
    with connect(url, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    return closed.value.rcvd.reason


def received_until(ws: ClientConnection, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        seen += ws.recv(timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[operator]
    return seen


def test_a_ticket_opens_the_vms_serial_console_and_screen_once(cluster: Cluster) -> None:
    status, vm = cluster.call("POST", "/api/v1/vms", {"name": "con", "specs": SPECS, "image": "tiny"})
    assert status == 201, vm
    uuid = vm["uuid"]
    wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 120, "the guest's boot")
    wait_until(lambda: cluster.vm(uuid)["status"] == "RUNNING", 60, "RUNNING")

    serial = ticket(cluster, uuid, "serial")
    with connect(serial["url"], open_timeout=10) as ws:
        # The guest's shell on its serial port: what we type runs there, and the answer comes back.
        wait_until(lambda: _typed(ws, b"echo ucloud-$((6 * 7))-ok\n"), 60, "the serial shell's answer")
    assert "the ticket was used" in refusal(serial["url"])  # once only

    screen = ticket(cluster, uuid, "vnc")
    assert "the ticket is for the vnc console" in refusal(screen["url"].replace("/vnc?", "/serial?"))
    screen = ticket(cluster, uuid, "vnc")
    with connect(screen["url"], open_timeout=10) as ws:
        assert received_until(ws, b"\n", 10).startswith(b"RFB 003.008")  # QEMU's VNC server greets

    # A ticket given for another host (the VM has since moved), and one that was never given.
    elsewhere, digest = new_ticket()
    cluster.store.create(TICKETS, digest, ConsoleTicket(digest=digest, user="admin", vm=uuid, host="h9",
                                                        kind=ConsoleKind.SERIAL))
    base = serial["url"].split("?")[0]
    assert "the ticket is for host h9, this is h1" in refusal(f"{base}?ticket={elsewhere}")
    assert "was never given" in refusal(f"{base}?ticket={new_ticket()[0]}")
    assert "no ticket" in refusal(base)
    assert serial["ticket"] not in (cluster.root / "proxy-h1.log").read_text()  # never logged


def _typed(ws: ClientConnection, line: bytes) -> bool:
    """Type `line` on the console; whether its answer came back within a few seconds (the shell may
    not have started yet: the caller types again)."""
    ws.send(line)
    try:
        received_until(ws, b"ucloud-42-ok", 5)
    except TimeoutError:
        return False
    return True
