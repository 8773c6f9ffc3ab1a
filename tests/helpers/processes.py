"""A whole ucloud as real processes: etcd, the API under gunicorn, the scheduler, and host agents
booting the tiny image in real QEMU (TCG). Used by the end-to-end tests and the agent benchmark."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.etcd import EtcdServer, free_port
from tests.helpers.tiny import tiny_image
from ucloud_common.config import load_settings
from ucloud_common.store import Store

BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    root: Path
    runs: Path  # UCLOUD_RUN_DIR: short, for the VMs' sockets (see `running_cluster`)
    env: dict[str, str]
    api_port: int
    token: str
    store: Store
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    schedulers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    etcd: EtcdServer | None = None
    capacity: dict[str, str] = field(default_factory=dict)  # what each agent offers (--cpu, --ram, --ssd)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        conn.close()
        return response.status, json.loads(text) if text else None

    def vm(self, uuid: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/v1/vms/{uuid}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def wait(self, uuid: str, status: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            vm = self.vm(uuid)
            if vm["status"] == status and all(vm.get(k) == v for k, v in fields.items()):
                return vm
            if time.monotonic() > deadline:
                raise AssertionError(f"VM {uuid} not {status} {fields} within {timeout} s: {vm['status']} "
                                     f"error={vm['error']!r} events={[e['message'] for e in vm['events']]}")
            time.sleep(0.1)

    def run_dir(self, host: str) -> Path:
        return self.runs / host

    def serial(self, host: str, uuid: str) -> str:
        path = self.run_dir(host) / "vms" / uuid / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def qemu_pid(self, host: str, uuid: str) -> int | None:
        path = self.run_dir(host) / "vms" / uuid / "qemu.pid"
        try:
            pid = int(path.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def start_agent(self, host: str, **capacity: str) -> None:
        args = [str(BIN / "ucloud-vm"), "run", "--hostname", host]
        for key, value in {**self.capacity, **capacity}.items():
            args += [f"--{key}", value]
        self.agents[host] = _spawn(args, self.env, self.root / f"agent-{host}.log")

    def start_console_proxy(self, host: str) -> None:
        """The host's console proxy on 127.0.0.1, at the cluster's UCLOUD_CONSOLE_PORT."""
        self.others.append(_spawn([str(BIN / "ucloud-vm"), "console-proxy", "--hostname", host, "--address",
                                   "127.0.0.1", "--bind", "127.0.0.1"], self.env, self.root / f"proxy-{host}.log"))

    def start_scheduler(self, name: str) -> None:
        self.schedulers[name] = _spawn([str(BIN / "ucloud-scheduler"), "run", "--name", name], self.env,
                                       self.root / f"scheduler-{name}.log")

    def stop_agent(self, host: str, sig: int = signal.SIGTERM) -> None:
        process = self.agents.pop(host)
        process.send_signal(sig)
        process.wait(timeout=15)

    def restart_agent(self, host: str, **settings: str) -> None:
        """Stop the host's agent if it runs (its QEMUs live on) and start it again with `settings`
        (UCLOUD_… variables) over the cluster's; none: as the cluster has them."""
        if host in self.agents:
            self.stop_agent(host)
        normal = self.env
        self.env = {**normal, **settings}
        try:
            self.start_agent(host)
        finally:
            self.env = normal


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.1)


@contextmanager
def running_cluster(root: Path, hosts: tuple[str, ...] = ("h1",), schedulers: tuple[str, ...] = ("s1",),
                    capacity: dict[str, str] | None = None, **settings: str) -> Iterator[Cluster]:
    """Start everything under `root` with agents for `hosts` and a scheduler per name in
    `schedulers`; stop it all (and every QEMU) at the end. With `UCLOUD_CEPH_CONF` among the
    settings, the tiny image is also imported into the Ceph image pool as `tiny-rbd`."""
    tiny = tiny_image()
    # The VMs' sockets live in the run directory, and a unix socket's path must be under 108 bytes:
    # <root>/run/h1/vms/<uuid>/serial.sock was not under pytest's temporary directory in two workers.
    runs = Path(tempfile.mkdtemp(prefix="ucloud-run-"))
    etcd = EtcdServer(root / "etcd")
    etcd.start()
    (root / "uploads").mkdir(exist_ok=True)
    conf = root / "ucloud.conf"
    lines = {
        "UCLOUD_ETCD_ENDPOINTS": etcd.endpoint, "UCLOUD_RUN_DIR": str(runs),
        "UCLOUD_IMAGE_DIR": str(root / "images"), "UCLOUD_DISK_DIR": str(root / "disks"),
        "UCLOUD_UPLOAD_DIR": str(root / "uploads"),
        "UCLOUD_ACCEL": "tcg", "UCLOUD_SHUTDOWN_TIMEOUT": "20", "UCLOUD_HOST_LEASE_TTL": "6",
        "UCLOUD_HEARTBEAT_INTERVAL": "1", "UCLOUD_LEADER_LEASE_TTL": "6", "UCLOUD_ETCD_TIMEOUT": "2",
        "UCLOUD_USER_WRITE_RATE": "", **settings,
    }
    conf.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}, "UCLOUD_CONFIG": str(conf)}
    subprocess.run([str(BIN / "ucloud-vm"), "import-image", str(tiny / "tiny.qcow2"), "--name", "tiny",
                    "--uuid", "tiny"], env=env, check=True, capture_output=True)
    if "UCLOUD_CEPH_CONF" in settings:
        subprocess.run([str(BIN / "ucloud-vm"), "import-image", str(tiny / "tiny.qcow2"), "--name", "tiny-rbd",
                        "--uuid", "tiny-rbd", "--store", lines.get("UCLOUD_CEPH_IMAGE_POOL", "images")],
                       env=env, check=True, capture_output=True)
    token = subprocess.run([str(BIN / "ucloud-api"), "create-admin", "admin"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    api_port = free_port()
    api = _spawn([str(BIN / "ucloud-api"), "serve", "--bind", f"127.0.0.1:{api_port}", "--workers", "2"], env,
                 root / "api.log")
    store = Store(load_settings(conf))
    the_cluster = Cluster(root, runs, env, api_port, token, store, others=[api], etcd=etcd, capacity=capacity or {})
    for name in schedulers:
        the_cluster.start_scheduler(name)
    for host in hosts:
        the_cluster.start_agent(host)
    wait_until(lambda: _answers(the_cluster), 30, "the API")
    try:
        yield the_cluster
    finally:
        daemons = [*the_cluster.agents.values(), *the_cluster.schedulers.values(), *the_cluster.others]
        for process in daemons:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a test may have left one stopped
                process.terminate()
        for process in daemons:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        # QEMUs outlive agents by design: whoever started the cluster cleans them up.
        subprocess.run(["pkill", "-9", "-f", f"{runs}/"], check=False)
        store.close()
        etcd.stop()
        shutil.rmtree(runs, ignore_errors=True)


def _answers(cluster: Cluster) -> bool:
    try:
        return cluster.call("GET", "/healthz")[0] == 200
    except OSError:
        return False
