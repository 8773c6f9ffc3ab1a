"""The scheduler's /metrics, on a real scheduler process and a real etcd: a placement moves the
placements counter, a VM no host can take is counted by its reason, a port taken is refused at start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import create_vm, register_host, vm, wait_for
from tests.helpers.etcd import EtcdServer, free_port
from tests.helpers.metrics import scrape, value
from ucloud_common.states import Status
from ucloud_common.store import Store

BIN = Path(sys.executable).parent


def scheduler_env(etcd_server: EtcdServer, tmp_path: Path, port: int) -> dict[str, str]:
    conf = tmp_path / "ucloud.conf"
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS={etcd_server.endpoint}\nUCLOUD_LEADER_LEASE_TTL=3\nUCLOUD_ETCD_TIMEOUT=1\n"
                    f"UCLOUD_SCHEDULER_METRICS_PORT={port}\n")
    return {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}, "UCLOUD_CONFIG": str(conf)}


@pytest.fixture
def scheduler(etcd_server: EtcdServer, store: Store, tmp_path: Path) -> Iterator[str]:
    """A scheduler process with its metrics on a free port; yields their URL."""
    port = free_port()
    log = tmp_path / "scheduler.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(BIN / "ucloud-scheduler"), "run", "--name", "s1"],
                                   env=scheduler_env(etcd_server, tmp_path, port), stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return value(scrape(url), "ucloud_scheduler_leader") == 1
        except OSError:
            assert process.poll() is None, log.read_text()
            return False

    wait_for(answers, 20, "the scheduler's /metrics, as leader")
    yield url
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_a_placement_moves_the_placements_counter(store: Store, scheduler: str) -> None:
    lease = register_host(store, "h1", ram=4)
    before = value(scrape(scheduler), "ucloud_scheduler_placements_total")
    small, big = create_vm(store, ram=1), create_vm(store, ram=64)
    wait_for(lambda: vm(store, small).status is Status.SCHEDULED_DEPLOY and vm(store, big).error, 15,
             "one placed, one refused")
    after = scrape(scheduler)
    assert value(after, "ucloud_scheduler_placements_total") - before == 1
    assert value(after, "ucloud_scheduler_unplaceable_vms", reason="no_room_ram") == 1
    assert value(after, "ucloud_scheduler_cycle_seconds_count") >= 1
    assert value(after, "ucloud_etcd_call_seconds_count", operation="txn") >= 1
    lease.close()


def test_a_metrics_port_in_use_is_refused_at_start_saying_which(etcd_server: EtcdServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([str(BIN / "ucloud-scheduler"), "run"], env=scheduler_env(etcd_server, tmp_path, port),
                                capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"cannot serve /metrics on 127.0.0.1:{port} (UCLOUD_SCHEDULER_METRICS_PORT" in result.stderr
