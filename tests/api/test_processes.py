"""The API as operators run it: `ucloud-api serve` (gunicorn) and `create-admin` as real processes,
and what happens when etcd goes away."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.etcd import EtcdServer, free_port
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings, load_settings
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.store import Store
from ucloud_common.user import Role

BIN = Path(sys.executable).parent
READ_TIMEOUT = 4  # UCLOUD_API_READ_TIMEOUT of the gunicorn below
UPLOAD_MAX = 16 * 1024 * 1024  # its UCLOUD_UPLOAD_MAX_SIZE, in bytes


def env_for(endpoint: str, tmp_path: Path) -> dict[str, str]:
    conf = tmp_path / "ucloud.conf"
    (tmp_path / "www").mkdir(exist_ok=True)
    # No write rate: the failover test writes as fast as it can (tests/api/test_ratelimit.py checks it).
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS={endpoint}\nUCLOUD_UPLOAD_DIR={tmp_path / 'www'}\nUCLOUD_USER_WRITE_RATE=\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    return {**clean, "UCLOUD_CONFIG": str(conf)}


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    text = response.read()
    conn.close()
    return response.status, json.loads(text) if text else None


def answering(port: int, log: Path) -> None:
    """Wait until the API on `port` answers /healthz (its log in the failure)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            if call(port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture
def gunicorn(etcd_server: EtcdServer, store: Store, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = env_for(etcd_server.endpoint, tmp_path)
    env["UCLOUD_API_READ_TIMEOUT"] = str(READ_TIMEOUT)
    env["UCLOUD_UPLOAD_MAX_SIZE"] = str(UPLOAD_MAX / 2**30)
    process = subprocess.Popen([str(BIN / "ucloud-api"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                               env=env, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "gunicorn.log", "w"))
    answering(port, tmp_path / "gunicorn.log")
    yield port
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_slow_clients_neither_hold_the_api_nor_keep_their_connections(gunicorn: int, tmp_path: Path) -> None:
    """8 connections sending one header line every 2 s (with sync workers, 4 left a 2-worker API
    unanswered for 60 s): others are answered meanwhile, and each slow one is closed once it has not
    sent a whole request within the read timeout."""
    slow = [socket.create_connection(("127.0.0.1", gunicorn)) for _ in range(8)]
    stop = threading.Event()

    def trickle() -> None:
        line = b"GET /healthz HTTP/1.1\r\nHost: api\r\n"
        while not stop.is_set():
            for conn in slow:
                try:
                    conn.sendall(line)
                except OSError:
                    pass  # closed by the server, as it should be
            line = b"X-Slow: 1\r\n"
            stop.wait(2)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        time.sleep(1)
        for _ in range(5):
            assert call(gunicorn, "GET", "/healthz")[0] == 200  # (within call's 10 s socket timeout)
        for conn in slow:
            conn.settimeout(READ_TIMEOUT * 10)
            assert conn.recv(1024) == b"", "the server closes a connection that sends no whole request"
    finally:
        stop.set()
        trickler.join()
        for conn in slow:
            conn.close()
    assert "no whole request within" in (tmp_path / "gunicorn.log").read_text()


def test_create_admin_prints_only_the_token(etcd_server: EtcdServer, store: Store, tmp_path: Path) -> None:
    env = env_for(etcd_server.endpoint, tmp_path)
    result = subprocess.run([str(BIN / "ucloud-api"), "create-admin", "root"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "." in lines[0]
    again = subprocess.run([str(BIN / "ucloud-api"), "create-admin", "root"], env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.returncode == 1 and "already exists" in again.stderr and again.stdout == ""
    bad = subprocess.run([str(BIN / "ucloud-api"), "create-admin", "../x"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 1 and "invalid name" in bad.stderr and "Traceback" not in bad.stderr


def test_under_gunicorn(gunicorn: int, store: Store, tmp_path: Path, etcd_server: EtcdServer) -> None:
    token = subprocess.run([str(BIN / "ucloud-api"), "create-admin", "root"], capture_output=True, text=True,
                           env=env_for(etcd_server.endpoint, tmp_path), check=True).stdout.strip()
    store.create(IMAGES, "tiny", Image(uuid="tiny", owner="root", name="tiny", store_name="local", public=True,
                                        status=ImageStatus.CREATED))
    status, vm = call(gunicorn, "POST", "/api/v1/vms", token, {"name": "g1", "specs": {"cpu": 1, "ram": 1, "ssd": 1},
                                                                "image": "tiny"})
    assert status == 201 and vm["status"] == "REQUESTED_NEW"
    assert call(gunicorn, "GET", f"/api/v1/vms/{vm['uuid']}", token)[1]["name"] == "g1"
    assert call(gunicorn, "GET", "/api/v1/vms", "wrong.token")[0] == 401
    assert call(gunicorn, "POST", "/api/v1/vms", token, raw=b"{nope")[0] == 400
    # A chunked body over the limit: gunicorn hands it on without a Content-Length.
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=10)
    conn.putrequest("POST", "/api/v1/vms")
    for name, value in {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Transfer-Encoding": "chunked"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    chunk = b"x" * 65536
    try:
        for _ in range(40):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the rest is sent
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "too_large"
    status, spec = call(gunicorn, "GET", "/api/v1/openapi.json")
    assert status == 200 and "/api/v1/vms" in spec["paths"]
    # Each worker froze its loaded cache out of garbage collection (ucloud_api/worker.py).
    deadline = time.monotonic() + 20
    while (tmp_path / "gunicorn.log").read_text().count("frozen out of garbage collection") < 2:
        assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
        time.sleep(0.2)


def test_etcd_down_is_503_and_nothing_half_written_then_recovery(tmp_path: Path) -> None:
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    settings: Settings = load_settings(config_file=_empty(tmp_path), etcd_endpoints=etcd.endpoint, etcd_timeout=1.0)
    store = Store(settings)
    try:
        _, token = create_user(store, "alice", Role.USER)
        store.create(IMAGES, "tiny", Image(uuid="tiny", owner="alice", name="tiny", store_name="local",
                                            public=True, status=ImageStatus.CREATED))
        client = create_app(settings, store).test_client()
        headers = {"Authorization": f"Bearer {token}"}
        body = {"name": "vm1", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny"}
        assert client.get("/api/v1/vms", headers=headers).status_code == 200
        etcd.stop()
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json["status"] == "unavailable"
        down = client.post("/api/v1/vms", headers=headers, json=body)
        assert down.status_code == 503 and "etcd" in down.json["error"]["message"]
        assert down.headers["Retry-After"] == "2"
        # A list is answered from the worker's cache at the revision it had reached; one that must
        # reflect a later revision (a write's) needs etcd.
        assert client.get("/api/v1/vms", headers=headers).status_code == 200
        later = client.get("/api/v1/vms", headers={**headers, "X-Ucloud-Revision": "999999"})
        assert later.status_code == 503 and "etcd" in later.json["error"]["message"]
        etcd.start()
        deadline = time.monotonic() + 15
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get("/api/v1/vms", headers=headers).json == []  # nothing half written
        assert client.post("/api/v1/vms", headers=headers, json=body).status_code == 201
    finally:
        store.close()
        etcd.stop()


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.conf"
    path.write_text("")
    return path


def test_the_metrics_directory_lasts_through_a_reload_and_goes_with_the_api(etcd_server: EtcdServer, store: Store,
                                                                            tmp_path: Path) -> None:
    """gunicorn reads its config file again on SIGHUP, in the same master: the workers' metrics
    directory made at the start must be kept (the counts go on) and still removed at the end."""
    port = free_port()
    env = {**env_for(etcd_server.endpoint, tmp_path), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    process = subprocess.Popen([str(BIN / "ucloud-api"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gunicorn.log", "w"))
    try:
        def answered() -> set[str]:
            answering(port, tmp_path / "gunicorn.log")
            return {p.name for p in (tmp_path / "tmp").glob("ucloud-api-metrics-*")}

        made = answered()
        assert len(made) == 1
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "Hang up" not in (tmp_path / "gunicorn.log").read_text() or \
                (tmp_path / "gunicorn.log").read_text().count("Booting worker") < 2:
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.1)
        assert answered() == made
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert not list((tmp_path / "tmp").glob("ucloud-api-metrics-*"))
