"""Keys that are no valid name, put and deleted under every prefix a daemon follows: every daemon
skips each event, put or delete, with a log line naming the key (quoted: it may hold a newline or
a terminal escape), and goes on. Against a real etcd, with a real agent (on the fake hypervisor)
and scheduler."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.helpers.cluster import vm, wait_for
from tests.integration.test_follow import a_vm
from tests.integration.test_supervision import Running
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS_ALIVE
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.vm import VMS
from ucloud_scheduler.fencing import NoFence
from ucloud_scheduler.scheduler import Scheduler
from ucloud_vm.agent import Agent

# Not UTF-8, a space, a path, empty, a newline with a fake log line, too long.
BAD_NAMES = [b"\xff\xfe", b"bad key", b"../escape", b"", b"x\nCRITICAL forged line", b"x" * 300]
PREFIXES = [b"/v1/vm/", b"/v1/host/", b"/v1/host-alive/"]


@pytest.fixture
def daemons(store: Store, agent: Agent, quick: Settings) -> Iterator[tuple[Agent, Scheduler]]:
    scheduler = Scheduler(Store(quick), quick, NoFence(), candidate="s1")
    running = [Running(agent.run), Running(scheduler.run)]
    try:
        yield agent, scheduler
    finally:
        for daemon in running:
            daemon.end()


def test_every_daemon_skips_bad_keys_put_and_deleted_and_goes_on(
        store: Store, daemons: tuple[Agent, Scheduler], caplog: pytest.LogCaptureFixture) -> None:
    """`etcdctl put "/v1/vm/bad key" '{}'; etcdctl del "/v1/vm/bad key"` (it killed the agent), for
    every prefix the daemons follow and several kinds of invalid name; then a VM is placed and run."""
    agent, scheduler = daemons
    wait_for(lambda: store.get(HOSTS_ALIVE, "h1") is not None, 10, "h1 registered")
    # Both following VMs already (a follower that lists after the bad keys came and went never sees them).
    store.create(VMS, "before", a_vm("before"))
    wait_for(lambda: vm(store, "before").status is Status.RUNNING, 20, "the VM before placed and running")
    with caplog.at_level(logging.WARNING):
        for prefix in PREFIXES:
            for name in BAD_NAMES:
                store.client.put(prefix + name, b"{}")
                store.client.delete(prefix + name)
        store.create(VMS, "after", a_vm("after"))
        wait_for(lambda: vm(store, "after").status is Status.RUNNING, 20, "the VM after placed and running")
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping invalid record")]
    # Each put and each delete, by each of the agent's follower (VMs) and the scheduler's three.
    for name in (b"bad key", b"x\nCRITICAL forged line"):
        key = repr((b"/v1/vm/" + name).decode())
        assert sum(key in line for line in skipped) == 4, (key, skipped)
    assert not any("\n" in line for line in skipped), "a key's newline reached the log"
    assert agent.failure is None and scheduler.failure is None
    assert store.get(HOSTS_ALIVE, "h1") is not None, "the agent gave up its host"
