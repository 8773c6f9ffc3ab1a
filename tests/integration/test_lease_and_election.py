"""Leases and leader election, on a real etcd and on MemoryStore; with candidates as real processes
(etcd only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest

from tests.helpers.candidate import MARKS
from tests.helpers.etcd import EtcdServer
from ucloud_common import clock
from ucloud_common.host import HOSTS_ALIVE, HostAlive
from ucloud_common.store import AbstractStore, Election, GuardFailed, KeptLease
from ucloud_common.specs import Specs
from ucloud_common.vm import VM, VMS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(any_store: AbstractStore) -> AbstractStore:
    return any_store


def wait_until(condition, timeout: float, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Seconds it took for `condition()` to hold; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


def test_lease_expiry_removes_the_key(store: AbstractStore, time_passes: Callable[[float], None]) -> None:
    lease = store.grant_lease(2)
    granted_at = clock.monotonic()
    store.create(HOSTS_ALIVE, "h1", HostAlive(agent_id="a"), lease=lease)
    time_passes(1.0)
    assert store.get(HOSTS_ALIVE, "h1") is not None
    while store.get(HOSTS_ALIVE, "h1") is not None:
        assert clock.monotonic() - granted_at < 5, "the key outlived its lease"
        time_passes(0.05)
    took = clock.monotonic() - granted_at
    # etcd checks for expired leases every 500 ms
    assert 1.9 < took < 3.0


def test_a_kept_lease_outlives_its_ttl_and_revoking_removes_the_key(store: AbstractStore) -> None:
    kept = KeptLease(store, ttl=2, interval=0.5)
    store.create(HOSTS_ALIVE, "h1", HostAlive(agent_id="a"), lease=kept.id)
    time.sleep(3.5)
    assert store.get(HOSTS_ALIVE, "h1") is not None and not kept.lost.is_set()
    kept.close(revoke=True)
    assert store.get(HOSTS_ALIVE, "h1") is None


def test_a_lease_that_expired_is_reported_lost(store: AbstractStore) -> None:
    lost = threading.Event()
    kept = KeptLease(store, ttl=2, interval=0.5, on_lost=lost.set)
    store.revoke_lease(kept.id)  # what etcd does when the holder was silent too long
    assert lost.wait(3) and kept.lost.is_set()
    kept.close()


def test_one_leader_and_resign_hands_over_at_once(store: AbstractStore,
                                                   connect: Callable[[], AbstractStore]) -> None:
    stop = threading.Event()
    first = Election(store, "sched", "one", ttl=3)
    assert first.campaign(stop) and first.is_leader
    second = Election(connect(), "sched", "two", ttl=3)
    won = threading.Event()
    thread = threading.Thread(target=lambda: second.campaign(stop) and won.set(), daemon=True)
    thread.start()
    assert not won.wait(1.0), "two leaders at once"
    first.resign()
    assert won.wait(2.0)
    with pytest.raises(GuardFailed):
        first.guard
    second.resign()


def test_a_leader_whose_lease_is_gone_cannot_write_and_another_leads(
        store: AbstractStore, connect: Callable[[], AbstractStore]) -> None:
    stop = threading.Event()
    first = Election(store, "sched", "one", ttl=3)
    assert first.campaign(stop)
    guard = first.guard
    second = Election(connect(), "sched", "two", ttl=3)
    won = threading.Event()
    threading.Thread(target=lambda: second.campaign(stop) and won.set(), daemon=True).start()
    assert first._lease is not None
    store.revoke_lease(first._lease.id)  # what etcd does when the leader was silent past its TTL
    with pytest.raises(GuardFailed):  # even before the deposed leader notices
        store.create(VMS, "vm1", VM_FOR_GUARD, guard=guard)
    assert won.wait(3.0) and second.is_leader
    wait_until(first.deposed.is_set, timeout=3)
    stop.set()
    second.resign()
    first.resign()


VM_FOR_GUARD = VM(uuid="vm1", owner="alice", name="vm1", specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


class Candidate:
    """A candidate process and the lines it prints."""

    def __init__(self, endpoint: str, name: str, ttl: int) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.candidate", endpoint, "sched", name, str(ttl)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except Empty:
                return self.seen

    def leads(self) -> bool:
        return f"LEADER {self.name}" in self.drain()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def candidates(etcd_server: EtcdServer, store: AbstractStore) -> Iterator[list[Candidate]]:
    started: list[Candidate] = []
    yield started
    for candidate in started:
        if candidate.process.poll() is None:
            os.kill(candidate.process.pid, signal.SIGCONT)
        candidate.kill()


@pytest.mark.etcd_only("candidates are processes sharing one etcd")
def test_killing_the_leader_elects_another_within_the_ttl(
        etcd_server: EtcdServer, candidates: list[Candidate]) -> None:
    ttl = 3
    candidates += [Candidate(etcd_server.endpoint, f"c{i}", ttl) for i in range(3)]
    wait_until(lambda: sum(c.leads() for c in candidates) >= 1, timeout=20)
    time.sleep(0.5)
    leaders = [c for c in candidates if c.leads()]
    assert len(leaders) == 1, "exactly one leader"
    leader = leaders[0]
    leader.kill()
    killed_at = time.monotonic()
    others = [c for c in candidates if c is not leader]
    wait_until(lambda: any(c.leads() for c in others), timeout=ttl + 5)
    took = time.monotonic() - killed_at
    # etcd checks lease expiry every 500 ms, and a standby reacts to the key's deletion at once.
    assert took <= ttl + 1.0, f"new leader after {took:.1f} s"
    time.sleep(0.5)
    assert sum(c.leads() for c in others) == 1


@pytest.mark.etcd_only("candidates are processes sharing one etcd")
def test_a_deposed_leader_cannot_write(etcd_server: EtcdServer, store: AbstractStore,
                                       candidates: list[Candidate]) -> None:
    ttl = 2
    first = Candidate(etcd_server.endpoint, "first", ttl)
    candidates.append(first)
    wait_until(first.leads, timeout=20)
    wait_until(lambda: "WROTE" in first.drain(), timeout=5)
    second = Candidate(etcd_server.endpoint, "second", ttl)
    candidates.append(second)

    os.kill(first.process.pid, signal.SIGSTOP)
    wait_until(second.leads, timeout=ttl + 5)
    wait_until(lambda: "WROTE" in second.drain(), timeout=5)
    first.drain()
    before_cont = len(first.seen)
    os.kill(first.process.pid, signal.SIGCONT)
    wait_until(lambda: len(first.drain()) >= before_cont + 5, timeout=10)

    after = first.seen[before_cont:]
    assert "REFUSED" in after and "WROTE" not in after, after
    mark = store.get(MARKS, "mark")
    assert mark is not None and mark.value.writer == "second"
