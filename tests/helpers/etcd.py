"""A real etcd for tests, driven through deploy/etcd.sh (so the operator's script is tested too):
one member (`EtcdServer`), or a cluster of members on loopback (`EtcdCluster`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "etcd.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    """One etcd process under `directory`: a single-member cluster, or (with `name` and `cluster`)
    one member of a cluster whose members are listed in `cluster` (name=peer URL, comma-separated)."""

    def __init__(self, directory: Path, *, client_port: int | None = None, peer_port: int | None = None,
                 name: str | None = None, cluster: str | None = None) -> None:
        self.directory = directory
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name = name
        self.cluster = cluster

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def _run(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], check=True, capture_output=True, text=True)

    def start(self) -> None:
        """Start; a single member returns once healthy, a cluster member once its process runs."""
        member = [self.name, self.cluster] if self.name and self.cluster else []
        self._run("start", str(self.directory), str(self.client_port), str(self.peer_port), *member)

    def stop(self) -> None:
        self._run("stop", str(self.directory))

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """kill -9, as a crash or a power cut would: no goodbye to clients or peers."""
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd {self.endpoint} (pid {self.pid}) still runs 10 s after SIGKILL")
            time.sleep(0.02)

    def stall(self, seconds: float) -> None:
        """SIGSTOP for `seconds`, then SIGCONT: the member accepts connections (the kernel does)
        but answers nothing, as a member starting up or paused on a loaded machine."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def running(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state != "Z"

    def healthy(self) -> bool:
        """The member answers /health with true: it has a leader and serves linearizable reads."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self) -> bool:
        """Whether this member is the cluster's raft leader now (etcd's status, through its HTTP gateway)."""
        request = urllib.request.Request(f"http://{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            status = json.load(response)
        return bool(status["leader"] == status["header"]["member_id"])

    def wait_healthy(self, timeout: float = 20) -> float:
        """Seconds until healthy; fails the test (with the log's tail) after `timeout`."""
        start = time.monotonic()
        while not self.healthy():
            if time.monotonic() - start > timeout:
                log = (self.directory / "etcd.log").read_text(errors="replace").splitlines()[-15:]
                raise AssertionError(f"etcd {self.endpoint} not healthy within {timeout} s:\n" + "\n".join(log))
            time.sleep(0.05)
        return time.monotonic() - start

    @property
    def pid(self) -> int:
        return int((self.directory / "etcd.pid").read_text())


class EtcdCluster:
    """`size` members on loopback, each its own process and data directory under `directory`
    (LAB.md: a cluster is such processes sharing one --initial-cluster list)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        peer_ports = [free_port() for _ in range(size)]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(peer_ports))
        self.members = [EtcdServer(directory / f"m{i}", peer_port=port, name=f"m{i}", cluster=cluster)
                        for i, port in enumerate(peer_ports)]

    @property
    def endpoints(self) -> str:
        """The members' client endpoints, comma-separated, as UCLOUD_ETCD_ENDPOINTS takes them."""
        return ",".join(member.endpoint for member in self.members)

    def member(self, endpoint: str) -> EtcdServer:
        return next(m for m in self.members if m.endpoint == endpoint)

    def leader(self) -> EtcdServer:
        return next(m for m in self.members if m.is_leader())

    def follower(self) -> EtcdServer:
        return next(m for m in self.members if not m.is_leader())

    def start(self, timeout: float = 30) -> None:
        for member in self.members:
            member.start()
        for member in self.members:
            member.wait_healthy(timeout)

    def heal(self, timeout: float = 30) -> None:
        """Restart every member that is not running and wait until all are healthy."""
        for member in self.members:
            if not member.running():
                member.start()
        for member in self.members:
            member.wait_healthy(timeout)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _shm_or_tmp() -> str | None:
    # etcd on tmpfs writes ≈45% faster (LAB.md); fall back to the default temp dir elsewhere.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def running_cluster(size: int = 3) -> Iterator[EtcdCluster]:
    """A healthy `size`-member cluster for the duration of the block, stopped and removed after."""
    with tempfile.TemporaryDirectory(prefix="ucloud-test-etcd-cluster-", dir=_shm_or_tmp()) as directory:
        cluster = EtcdCluster(Path(directory), size)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
