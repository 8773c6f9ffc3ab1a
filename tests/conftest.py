"""Fixtures shared by every test tier: a real etcd per session, a clean keyspace per test."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.ceph import CephServer
from tests.helpers.etcd import EtcdServer
from ucloud_common import clock
from ucloud_common.clock import SimClock
from ucloud_common.config import Settings, load_settings
from ucloud_common.store import AbstractStore, MemoryStore, Store

if TYPE_CHECKING:  # pytest-xdist is imported only when it runs the suite
    from xdist.remote import Producer
    from xdist.scheduler.protocol import Scheduling


def _shm_or_tmp() -> str | None:
    # etcd on tmpfs writes ≈45% faster (LAB.md); fall back to the default temp dir elsewhere.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown with `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling | None:
    if config.getoption("dist") != "loadfile":
        return None  # another --dist chosen on the command line: xdist's own
    from tests.helpers.xdist_scheduling import FileOrGroupScheduling
    return FileOrGroupScheduling(config, log)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    with tempfile.TemporaryDirectory(prefix="ucloud-test-etcd-", dir=_shm_or_tmp()) as directory:
        server = EtcdServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ceph_server() -> Iterator[CephServer]:
    with tempfile.TemporaryDirectory(prefix="ucloud-test-ceph-", dir=_shm_or_tmp()) as directory:
        server = CephServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def settings(etcd_server: EtcdServer, tmp_path: Path) -> Settings:
    (tmp_path / "www").mkdir(exist_ok=True)
    return load_settings(
        config_file=_empty_config(tmp_path), etcd_endpoints=etcd_server.endpoint, etcd_timeout=2.0,
        host_lease_ttl=10, heartbeat_interval=1.0, leader_lease_ttl=3,
        upload_dir=tmp_path / "www",  # the API makes users' folders: never in the machine's /var/www
        user_write_rate="",  # tests write faster than a user may (tests/api/test_ratelimit.py checks the limit)
    )


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "ucloud.conf"
    path.write_text("")
    return path


@pytest.fixture
def etcd_store(settings: Settings) -> Iterator[Store]:
    """A store on a keyspace emptied before the test, so tests never see each other's keys."""
    store = Store(settings)
    store.client.delete_prefix("/")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def store(etcd_store: Store) -> Store:
    return etcd_store


# -- the store contract on both implementations ----------------------------------------------------
# A module of contract tests overrides `store` with `any_store`, so that each of its tests runs on a
# real etcd and on MemoryStore; a test that needs a real etcd (killing it, cutting its connection,
# gRPC failures, processes sharing it) is marked `etcd_only("why")`.


@pytest.fixture(params=["etcd", "memory"])
def any_store(request: pytest.FixtureRequest) -> Iterator[AbstractStore]:
    if request.param == "etcd":
        yield request.getfixturevalue("etcd_store")
        return
    marker = request.node.get_closest_marker("etcd_only")
    if marker is not None:
        pytest.skip(f"needs a real etcd: {marker.args[0]}")
    store = MemoryStore(load_settings(config_file=_empty_config(request.getfixturevalue("tmp_path")),
                                      etcd_timeout=2.0, leader_lease_ttl=3))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def connect(any_store: AbstractStore) -> Iterator[Callable[[], AbstractStore]]:
    """Another connection to the same store, as another process would have."""
    opened: list[AbstractStore] = []

    def another() -> AbstractStore:
        other = any_store.connect() if isinstance(any_store, MemoryStore) else Store(any_store.settings)
        opened.append(other)
        return other

    yield another
    for other in opened:
        other.close()


@pytest.fixture
def time_passes(any_store: AbstractStore) -> Iterator[Callable[[float], None]]:
    """Let `seconds` pass for the store's leases: real seconds on etcd, a SimClock's on MemoryStore
    (which runs the whole test on that clock, so grant leases after asking for this)."""
    if isinstance(any_store, Store):
        yield time.sleep
        return
    with clock.simulated(SimClock()) as simulated:
        assert isinstance(simulated, SimClock)
        yield simulated.advance


@pytest.fixture(scope="session")
def console_assets() -> None:
    """The console site's browser parts (noVNC, xterm.js), which `deploy/install.sh` fetches: fetched
    here too (it checks a stamp and fetches nothing when they are there), so a test run never depends
    on which installs ran before it."""
    subprocess.run(["bash", str(Path(__file__).parent.parent / "deploy" / "console-assets.sh")], check=True)
