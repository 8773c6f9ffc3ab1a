"""A real etcd for tests, driven through deploy/etcd.sh (so the operator's script is tested too)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "etcd.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _run(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], check=True, capture_output=True, text=True)

    def start(self) -> None:
        self._run("start", str(self.directory), str(self.client_port), str(self.peer_port))

    def stop(self) -> None:
        self._run("stop", str(self.directory))

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        return int((self.directory / "etcd.pid").read_text())
