"""The store against a 3-member etcd cluster whose members die: it fails over to a healthy member
within a bounded time, for reads, compare-and-swap writes and watches."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.etcd import EtcdCluster, EtcdServer, running_cluster
from tests.integration.test_follow import Collector, a_vm, write_retrying
from ucloud_common.config import Settings, load_settings
from ucloud_common.store import Follower, Store, StoreUnavailable
from ucloud_common.store.watch import WATCH_IDLE_S
from ucloud_common.vm import VMS

# Generous: the store notices a killed member at its next call (connection refused, measured in
# milliseconds on loopback); a hung member costs at most one etcd_timeout (2 s here).
BOUND_S = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with running_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(cluster: EtcdCluster, tmp_path: Path) -> Iterator[Settings]:
    cluster.heal()
    conf = tmp_path / "ucloud.conf"
    conf.write_text("")
    yield load_settings(config_file=conf, etcd_endpoints=cluster.endpoints, etcd_timeout=2.0)
    cluster.heal()  # the next test starts with three healthy members again


def store_on(member: EtcdServer, settings: Settings) -> Store:
    """A Store (of all members) that happens to talk to `member`: a Store picks its first member
    at random, and costs nothing until its first call, so make them until one picks it."""
    while True:
        store = Store(settings)
        if store.endpoint == member.endpoint:
            return store
        store.close()


@contextmanager
def watched_on(victim: EtcdServer, settings: Settings) -> Iterator[tuple[Store, Store, Collector]]:
    """A follower of the VM family on a store that talks to `victim` (keyspace emptied first), and
    a store that writes through the other members; closed afterwards."""
    watching = store_on(victim, settings)
    watching.client.delete_prefix("/")
    writing = Store(settings.model_copy(update={"etcd_endpoints": [
        ep for ep in settings.etcd_endpoints if str(ep) != victim.endpoint]}))
    collector = Collector(Follower(watching, VMS))
    try:
        collector.wait_for(lambda: len(collector.items) == 1)
        yield watching, writing, collector
    finally:
        collector.stop()
        watching.close()
        writing.close()


def read_and_swap(store: Store, name: str) -> None:
    """One read and one compare-and-swap write of `name`."""
    current = store.get(VMS, name)
    assert current is not None
    store.replace(VMS, name, current.value.evolve(restarts=current.value.restarts + 1), current.mod_revision)


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_killing_the_member_the_store_talks_to_fails_over_within_a_bound(
        cluster: EtcdCluster, cluster_settings: Settings, role: str) -> None:
    victim = cluster.leader() if role == "leader" else cluster.follower()
    store = store_on(victim, cluster_settings)
    store.client.delete_prefix("/")
    store.create(VMS, "vm1", a_vm("vm1"))
    read_and_swap(store, "vm1")
    victim.kill()
    killed_at = time.monotonic()
    failures: list[str] = []
    while True:
        try:
            read_and_swap(store, "vm1")
            break
        except StoreUnavailable as exc:
            failures.append(str(exc))
            assert time.monotonic() - killed_at < BOUND_S, (
                f"still failing {BOUND_S} s after {victim.endpoint} was killed: {failures[-1]}")
            time.sleep(0.05)
    took = time.monotonic() - killed_at
    # Killing the leader adds etcd's own election (--election-timeout 1 s by default) to a write.
    print(f"\nstore failed over from the {role} {victim.endpoint} to {store.endpoint}: read and "
          f"compare-and-swap answered again after {took * 1000:.0f} ms ({len(failures)} calls answered "
          "'unavailable' meanwhile)")
    assert took < BOUND_S
    assert store.endpoint != victim.endpoint
    for _ in range(20):  # and it stays on a healthy member
        read_and_swap(store, "vm1")
    final = store.get(VMS, "vm1")
    store.close()
    # 22 swaps succeeded; a swap that answered "unavailable" may still have been applied (the
    # store's contract), so each failure may have added one more.
    assert final is not None and 22 <= final.value.restarts <= 22 + len(failures)


def test_a_follower_fails_over_without_missing_or_repeating_a_change(
        cluster: EtcdCluster, cluster_settings: Settings) -> None:
    victim = cluster.leader()  # the harder case: writes also wait for a new leader
    with watched_on(victim, cluster_settings) as (watching, writing, collector):
        for i in range(10):
            writing.create(VMS, f"vm{i:02}", a_vm(f"vm{i:02}"))
        collector.wait_for(lambda: len(collector.changes()) == 10)
        victim.kill()
        killed_at = time.monotonic()
        for i in range(10, 20):
            write_retrying(writing, f"vm{i:02}")  # a write may time out while a new leader is elected
        collector.wait_for(lambda: len(collector.changes()) >= 20, timeout=BOUND_S)
        print(f"\nwatch failed over from {victim.endpoint} to {watching.endpoint}; all changes seen "
              f"{time.monotonic() - killed_at:.2f} s after the kill")
        time.sleep(0.5)  # anything repeated would arrive now
        assert [c.name for c in collector.changes()] == [f"vm{i:02}" for i in range(20)]
        assert collector.alive()


def test_a_follower_whose_member_stalls_notices_and_resumes_on_another(
        cluster: EtcdCluster, cluster_settings: Settings) -> None:
    """SIGSTOP: the member's connections stay open (the kernel keeps them) but nothing is answered,
    so the stream breaks nowhere. The watch's progress request goes unanswered, and the follower
    moves on within WATCH_IDLE_S + etcd_timeout, well before gRPC's keep-alive (10 s + 5 s) would."""
    victim = cluster.follower()
    with watched_on(victim, cluster_settings) as (watching, writing, collector):
        try:
            writing.create(VMS, "before", a_vm("before"))
            collector.wait_for(lambda: len(collector.changes()) == 1)
            os.kill(victim.pid, signal.SIGSTOP)
            stalled_at = time.monotonic()
            for i in range(5):
                write_retrying(writing, f"vm{i}")
            collector.wait_for(lambda: len(collector.changes()) >= 6, timeout=15)
            took = time.monotonic() - stalled_at
            print(f"\nfollower noticed its stalled member {victim.endpoint} and resumed on {watching.endpoint}: "
                  f"all changes seen {took:.1f} s after the stall began (bound: {WATCH_IDLE_S} s idle + "
                  f"{cluster_settings.etcd_timeout} s for the progress answer)")
            assert took < WATCH_IDLE_S + cluster_settings.etcd_timeout + 2.0
            time.sleep(0.5)
            assert [c.name for c in collector.changes()] == ["before"] + [f"vm{i}" for i in range(5)]
        finally:
            os.kill(victim.pid, signal.SIGCONT)
