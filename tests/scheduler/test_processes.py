"""Schedulers as real processes: two racing, a leader killed, a leader deposed by SIGSTOP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import create_vm, vm, wait_for
from tests.helpers.etcd import EtcdServer
from ucloud_common.allocation import allocations
from ucloud_common.event import EVENTS
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Change, Follower, KeptLease, Store
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VMS

BIN = Path(sys.executable).parent
TTL = 3


@pytest.fixture
def schedulers(etcd_server: EtcdServer, store: Store, tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    conf = tmp_path / "ucloud.conf"
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS={etcd_server.endpoint}\nUCLOUD_LEADER_LEASE_TTL={TTL}\n"
                    "UCLOUD_ETCD_TIMEOUT=1\nUCLOUD_LOG_LEVEL=INFO\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}

    def start(name: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([str(BIN / "ucloud-scheduler"), "--config", str(conf), "run", "--name", name],
                                   env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "w"),
                                   text=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def hosts(store: Store, count: int, **capacity: float) -> KeptLease:
    """`count` live hosts sharing one kept lease."""
    lease = KeptLease(store, ttl=10, interval=2)
    for i in range(count):
        name = f"h{i:02}"
        store.create(HOSTS_ALIVE, name, HostAlive(agent_id=name), lease=lease.id)
        store.create(HOSTS, name, Host(name=name, capacity=Specs.model_validate(
            {"cpu": 4, "ram": 16, "ssd": 200, **capacity})))
    return lease


def leader(store: Store) -> str | None:
    value, _ = store.client.get(leader_key("scheduler"))
    return value.decode() if value else None


def test_two_schedulers_racing_over_500_vms_and_50_hosts(
        store: Store, schedulers: Callable[[str], subprocess.Popen[str]]) -> None:
    lease = hosts(store, 50, ram=10)  # 50 × 10 GiB for 500 VMs of 1 GiB: room for all, none to spare
    history: dict[str, list[str]] = {}
    follower = Follower(store, VMS, start_revision=store.revision() + 1)

    def watch() -> None:
        for item in follower:
            if isinstance(item, Change) and item.value is not None:
                history.setdefault(item.name, []).append(item.value.value.hostname)

    threading.Thread(target=watch, daemon=True).start()
    schedulers("a")
    schedulers("b")
    uuids = [create_vm(store, ram=1) for _ in range(500)]
    wait_for(lambda: all(vm(store, u).status is Status.SCHEDULED_DEPLOY for u in uuids), 60, "500 placements")
    time.sleep(1)
    follower.stop()
    for u in uuids:
        hostnames = [h for h in history[u] if h]
        assert len(set(hostnames)) == 1, f"{u} placed more than once: {hostnames}"
    totals = allocations(v.value for v in store.list(VMS).items.values())
    assert len(totals) == 50 and all(t.ram <= 10 for t in totals.values()), "a host was overfilled"
    sources = {e.value.source for e in store.list(EVENTS).items.values()}
    assert len(sources) == 1 and sources <= {"scheduler a", "scheduler b"}, sources
    lease.close()


def test_a_killed_leader_is_replaced_within_the_ttl(
        store: Store, schedulers: Callable[[str], subprocess.Popen[str]]) -> None:
    lease = hosts(store, 2)
    processes = {"a": schedulers("a"), "b": schedulers("b")}
    wait_for(lambda: leader(store) in ("a", "b"), 20, "a leader")
    first = leader(store)
    assert first is not None
    warm = create_vm(store)
    wait_for(lambda: vm(store, warm).status is Status.SCHEDULED_DEPLOY, 10)
    processes[first].kill()
    killed_at = time.monotonic()
    u = create_vm(store)
    wait_for(lambda: vm(store, u).status is Status.SCHEDULED_DEPLOY, TTL + 5, "placement by the standby")
    took = time.monotonic() - killed_at
    assert leader(store) not in (None, first)
    assert took <= TTL + 1.5, f"placed {took:.1f} s after the leader was killed"
    lease.close()


def test_a_deposed_leader_cannot_write(store: Store, schedulers: Callable[[str], subprocess.Popen[str]]) -> None:
    lease = hosts(store, 4)
    processes = {"a": schedulers("a")}
    wait_for(lambda: leader(store) == "a", 20, "a leads")
    processes["b"] = schedulers("b")
    os.kill(processes["a"].pid, signal.SIGSTOP)
    stopped_at = time.time()
    wait_for(lambda: leader(store) == "b", TTL + 5, "b leads")
    waiting = [create_vm(store) for _ in range(20)]
    os.kill(processes["a"].pid, signal.SIGCONT)  # a wakes up with work in its inbox and an old guard
    wait_for(lambda: all(vm(store, u).status is Status.SCHEDULED_DEPLOY for u in waiting), 15)
    time.sleep(2)
    writers = {e.value.source for e in store.list(EVENTS).items.values() if e.value.created_at.timestamp() > stopped_at}
    assert writers == {"scheduler b"}, writers
    assert processes["a"].poll() is None, "the deposed leader keeps running, as a standby"
    lease.close()
