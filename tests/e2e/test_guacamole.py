"""Guacamole's way in, end to end on real parts: an agent with UCLOUD_GUACAMOLE_VNC_ADDRESS starts the
tiny guest's QEMU with a second VNC server on TCP, records where it listens and its password, and the
API answers them as guacamole-auth-json's definition. Connecting to it as guacd would — RFB 3.8, VNC
authentication (DES) — reaches the VM's ServerInit with the password and is refused without it; the
CLI prints the same. A VM stopped has no endpoint, and started again it gets a new password. (guacd
itself is not installable here: the RFB handshake below is what it does first.)"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from tests.api.test_guacamole import KEY
from tests.helpers.processes import BIN, Cluster, running_cluster, wait_until

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("guacamole"), UCLOUD_GUACAMOLE_VNC_ADDRESS="127.0.0.1",
                         UCLOUD_GUACAMOLE_SECRET_KEY=KEY) as the_cluster:
        yield the_cluster


def listens(hostname: str, port: int) -> bool:
    try:
        socket.create_connection((hostname, port), timeout=5).close()
    except OSError:
        return False
    return True


class Refused(Exception):
    """The VNC server refused the password; `str()` is its reason."""


def vnc_login(hostname: str, port: int, password: str) -> tuple[int, int, str]:
    """RFB 3.8 with VNC authentication, as guacd's libvncclient does it: the screen's width, height
    and name from ServerInit; `Refused` with the server's reason for a wrong password."""
    with socket.create_connection((hostname, port), timeout=10) as sock:
        file = sock.makefile("rb")
        assert file.read(12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        types = file.read(file.read(1)[0])
        assert 2 in types, types  # VNC authentication offered (1, none, must not be)
        assert 1 not in types, types
        sock.sendall(b"\x02")
        challenge = file.read(16)
        sock.sendall(_des(password, challenge))
        if struct.unpack(">I", file.read(4))[0] != 0:
            raise Refused(file.read(struct.unpack(">I", file.read(4))[0]).decode())
        sock.sendall(b"\x01")  # ClientInit: share the screen
        width, height = struct.unpack(">HH", file.read(4))
        file.read(16)  # the pixel format
        name = file.read(struct.unpack(">I", file.read(4))[0]).decode()
        return width, height, name


def _des(password: str, challenge: bytes) -> bytes:
    """VNC's response: the challenge encrypted with DES under the password's first 8 bytes, each
    byte's bits reversed (RFC 6143 leaves it out; every VNC server does it)."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # three equal keys: single DES
    return encryptor.update(challenge) + encryptor.finalize()


def endpoint(cluster: Cluster, uuid: str) -> dict[str, str]:
    status, answer = cluster.call("GET", f"/api/v1/vms/{uuid}/guacamole")
    assert status == 200, answer
    [(name, connection)] = answer["definition"]["connections"].items()
    assert name == "gua" and connection["protocol"] == "vnc" and answer["data"]
    return connection["parameters"]  # type: ignore[no-any-return]


def test_guacd_reaches_the_vms_screen_with_the_password_and_only_with_it(cluster: Cluster) -> None:
    status, vm = cluster.call("POST", "/api/v1/vms", {"name": "gua", "specs": SPECS, "image": "tiny"})
    assert status == 201, vm
    uuid = vm["uuid"]
    cluster.wait(uuid, "RUNNING", 120)
    vnc = endpoint(cluster, uuid)
    assert vnc["hostname"] == "127.0.0.1" and 5900 <= int(vnc["port"]) < 6000 and len(vnc["password"]) == 8
    assert vnc["password"] not in str(cluster.vm(uuid))

    with pytest.raises(Refused):
        vnc_login(vnc["hostname"], int(vnc["port"]), "wrong-pw")
    width, height, name = vnc_login(vnc["hostname"], int(vnc["port"]), vnc["password"])
    assert width > 0 and height > 0 and name == f"QEMU ({uuid})"  # this VM's screen (QEMU's -name guest=<uuid>)

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")},
           "UCLOUD_API_URL": f"http://127.0.0.1:{cluster.api_port}", "UCLOUD_TOKEN": cluster.token}
    printed = subprocess.run([str(BIN / "ucloud"), "vm", "guacamole", "gua"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert f"port        {vnc['port']}" in printed and "query       data=" in printed, printed

    status, _ = cluster.call("POST", f"/api/v1/vms/{uuid}/shutdown")
    assert status == 202
    cluster.wait(uuid, "STOPPED", 60)
    status, refused = cluster.call("GET", f"/api/v1/vms/{uuid}/guacamole")
    assert status == 409 and refused["error"]["message"] == "the VM is STOPPED: start it first"
    # Its QEMU, and its VNC server, are gone — a moment after STOPPED, which the agent records before it
    # ends the process (ucloud_vm/agent.py: record, then act), a moment that lasts on a busy machine.
    wait_until(lambda: not listens(vnc["hostname"], int(vnc["port"])), 30, "its QEMU's VNC server gone")

    status, _ = cluster.call("POST", f"/api/v1/vms/{uuid}/start")
    assert status == 202
    cluster.wait(uuid, "RUNNING", 120)
    again = endpoint(cluster, uuid)
    assert again["password"] != vnc["password"]  # each start, a fresh password
    with pytest.raises(Refused):
        vnc_login(again["hostname"], int(again["port"]), vnc["password"])
    assert vnc_login(again["hostname"], int(again["port"]), again["password"])[2] == f"QEMU ({uuid})"
