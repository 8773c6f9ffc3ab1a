"""No background loop of a daemon dies of an exception: each tells a failure once (not once per
turn) and goes on with its duty. A failure is injected into each loop of the agent (following the
VMs, the monitor, the host check, the heartbeat, the registration) and of the scheduler (following,
the cycle, the election); the daemon keeps its lease or leadership and does its work afterwards.
Against a real etcd, the agent on the fake hypervisor. (The workers' loop: tests/vm/test_parts.py;
a thread that ends anyway ends its daemon: tests/unit/test_supervise.py.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_mock import MockerFixture

import ucloud_vm.agent
from tests.helpers.cluster import register_host, vm, wait_for
from tests.helpers.etcd import EtcdServer
from tests.helpers.poison import POISON, PoisonedFollower, poisoned
from tests.integration.test_follow import a_vm, write_retrying
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS, HOSTS_ALIVE
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VMS, placed_on
from ucloud_scheduler.fencing import NoFence
from ucloud_scheduler.scheduler import Scheduler
from ucloud_scheduler.view import View
from ucloud_vm.agent import Agent
from ucloud_vm.fake_driver import FakeDriver

T = TypeVar("T")

BIN = Path(sys.executable).parent
# Long, so that a standby taking over well within it shows the leader resigned rather than its
# lease expiring.
TTL = 10


def leader(store: Store) -> str | None:
    return store.read_key(leader_key("scheduler"))[0]


class Running:
    """A daemon object's run(stop) in a thread."""

    def __init__(self, run: object) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run, args=(self.stop,), daemon=True)  # type: ignore[arg-type]
        self.thread.start()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


@pytest.fixture
def long_ttl(settings: Settings) -> Settings:
    return settings.model_copy(update={"leader_lease_ttl": TTL})


@pytest.fixture
def stores(long_ttl: Settings) -> Iterator[list[Store]]:
    made: list[Store] = []
    yield made
    for store in made:
        store.close()


def told(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The log lines of the failure helper that mention `text` (each failure it tells, reminders,
    and its end)."""
    return [r.getMessage() for r in caplog.records if r.name == "ucloud_common.failures" and text in r.getMessage()]


def failing_first(real: Callable[..., T], times: int, what: str) -> tuple[Callable[..., T], list[int]]:
    """`real`, raising RuntimeError(`what`) on its first `times` calls; and the list of calls made."""
    calls: list[int] = []

    def call(*args: Any, **kwargs: Any) -> T:
        calls.append(len(calls))
        if len(calls) <= times:
            raise RuntimeError(what)
        return real(*args, **kwargs)

    return call, calls


def driver_of(agent: Agent) -> FakeDriver:
    driver = agent._driver
    assert isinstance(driver, FakeDriver)
    return driver


def run_placed_vm(store: Store, agent: Agent, uuid: str) -> None:
    """A VM placed on h1 (as the scheduler places it), started by the agent."""
    store.create(VMS, uuid, a_vm(uuid).evolve(status=Status.SCHEDULED_DEPLOY, **placed_on("h1")))
    wait_for(lambda: vm(store, uuid).status is Status.RUNNING and uuid in driver_of(agent).guests, 15,
             f"{uuid} running")


def crash_is_noticed(store: Store, agent: Agent, uuid: str) -> float:
    """Crash the VM's (fake) QEMU; how long until the agent restarted it. The resync is 10 minutes
    away: only the monitor can notice."""
    driver_of(agent).crash(uuid)
    return wait_for(lambda: vm(store, uuid).restarts >= 1, 15, f"the crash of {uuid} noticed")


def test_an_agent_whose_follower_raises_goes_on_and_still_sees_new_vms(
        store: Store, agent: Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The iteration raises (the follower is poisoned) and folding one VM raises: both told, the
    lease kept, and a VM placed afterwards runs."""
    monkeypatch.setattr(ucloud_vm.agent, "Follower", poisoned(ucloud_vm.agent.Follower))
    real_fold = agent._fold

    def fold(item: Any) -> None:
        if getattr(item, "name", "") == "unfoldable":
            raise RuntimeError("a bug, injected by the test: cannot fold unfoldable")
        real_fold(item)

    monkeypatch.setattr(agent, "_fold", fold)
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(HOSTS_ALIVE, "h1") is not None, 10, "h1 registered")
        store.create(VMS, POISON, a_vm(POISON))
        store.create(VMS, "unfoldable", a_vm("unfoldable"))
        run_placed_vm(store, agent, "after")
        assert running.thread.is_alive() and agent.failure is None, agent.failure
        assert store.get(HOSTS_ALIVE, "h1") is not None, "the agent gave up its host"
        assert len(told(caplog, f"the consumer died on vm={POISON}")) == 1
        assert len(told(caplog, "cannot fold unfoldable")) == 1
    finally:
        running.end()
    assert agent.failure is None


def test_a_garbage_host_record_is_told_once_and_the_monitor_still_notices_a_crash(
        store: Store, agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    """The review's reproduction: a garbage /v1/host/h1 for a while (the host check fails at every
    turn, told once), then a QEMU crash: noticed by the monitor at once, not by the next resync."""
    running = Running(agent.run)
    try:
        run_placed_vm(store, agent, "vm1")
        store.client.put(HOSTS.key("h1"), '{"name": "h1", "capacity": "garbage"}')
        wait_for(lambda: len(told(caplog, "/v1/host/h1")) >= 1, 10, "the host check failing")
        time.sleep(2.0)  # several more host checks fail meanwhile (every 0.3 s)
        took = crash_is_noticed(store, agent, "vm1")
        print(f"\nwith a garbage host record, a crash was noticed and the VM restarted in {took:.2f} s")
        assert len(told(caplog, "/v1/host/h1")) == 1, told(caplog, "/v1/host/h1")
        assert running.thread.is_alive() and agent.failure is None
    finally:
        running.end()


def test_a_failing_monitor_is_told_once_and_goes_on(
        store: Store, agent: Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    tick, calls = failing_first(agent.monitor_tick, 3, "a monitor failure, injected by the test")
    monkeypatch.setattr(agent, "monitor_tick", tick)
    running = Running(agent.run)
    try:
        run_placed_vm(store, agent, "vm1")
        wait_for(lambda: len(calls) > 3, 10, "the monitor past its failures")
        crash_is_noticed(store, agent, "vm1")
        assert told(caplog, "injected by the test")[0].startswith("monitor failed: RuntimeError")
        assert len(told(caplog, "injected by the test")) == 1
        assert "monitor works again after failing 3 times in a row" in caplog.text
        assert running.thread.is_alive() and agent.failure is None
    finally:
        running.end()


def test_a_failing_heartbeat_is_told_once_and_the_lease_kept(
        store: Store, agent: Agent, mocker: MockerFixture, caplog: pytest.LogCaptureFixture) -> None:
    """Three renewals in a row fail (3 s, the TTL is 10 s): told once, the lease renewed after."""
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(HOSTS_ALIVE, "h1") is not None, 10, "h1 registered")
        refresh, calls = failing_first(store.refresh_lease, 3, "a renewal failure, injected by the test")
        mocker.patch.object(store, "refresh_lease", side_effect=refresh)
        wait_for(lambda: len(calls) >= 6, 15, "renewals past the failures")
        assert len(told(caplog, "injected by the test")) == 1
        assert "renewal works again after failing 3 times in a row" in caplog.text
        assert store.get(HOSTS_ALIVE, "h1") is not None and running.thread.is_alive() and agent.failure is None
    finally:
        running.end()


def test_a_failing_registration_is_told_once_and_tried_until_it_succeeds(
        store: Store, agent: Agent, mocker: MockerFixture, caplog: pytest.LogCaptureFixture) -> None:
    announce, calls = failing_first(agent.announce, 2, "a registration failure, injected by the test")
    mocker.patch.object(agent, "announce", side_effect=announce)
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(HOSTS_ALIVE, "h1") is not None, 15, "h1 registered")
        assert len(calls) == 3 and len(told(caplog, "injected by the test")) == 1
        assert running.thread.is_alive() and agent.failure is None
    finally:
        running.end()


@pytest.fixture
def scheduler(store: Store, long_ttl: Settings, stores: list[Store]) -> Scheduler:
    stores.append(Store(long_ttl))
    return Scheduler(stores[-1], long_ttl, NoFence(), candidate="s1")


def test_a_scheduler_whose_follower_raises_keeps_leading_and_places(
        store: Store, scheduler: Scheduler, caplog: pytest.LogCaptureFixture) -> None:
    """The VM follower's iteration raises (poisoned), and folding one VM into the view raises: both
    told once; the scheduler keeps its leadership and places a VM created afterwards."""
    scheduler._followers["vm"] = PoisonedFollower(scheduler._followers["vm"])  # type: ignore[assignment]
    real_apply = View.apply_vms

    def apply_vms(view: View, item: Any) -> None:
        if getattr(item, "name", "") == "unfoldable":
            raise RuntimeError("a bug, injected by the test: cannot fold unfoldable")
        real_apply(view, item)

    scheduler._folds["vm"] = apply_vms
    host = register_host(store, "h1", ttl=30)
    running = Running(scheduler.run)
    try:
        wait_for(lambda: leader(store) == "s1", 10, "s1 leads")
        store.create(VMS, POISON, a_vm(POISON))
        store.create(VMS, "unfoldable", a_vm("unfoldable"))
        write_retrying(store, "after")
        wait_for(lambda: vm(store, "after").status is Status.SCHEDULED_DEPLOY, 15, "the VM after placed")
        assert leader(store) == "s1" and running.thread.is_alive() and scheduler.failure is None
        assert len(told(caplog, f"the consumer died on vm={POISON}")) == 1
        assert len(told(caplog, "cannot fold unfoldable")) == 1
    finally:
        running.end()
        host.close()


def test_a_failing_cycle_is_told_once_and_the_next_places(
        store: Store, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cycle, calls = failing_first(scheduler.run_cycle, 3, "a cycle failure, injected by the test")
    monkeypatch.setattr(scheduler, "run_cycle", cycle)
    host = register_host(store, "h1", ttl=30)
    write_retrying(store, "vm1")
    running = Running(scheduler.run)
    try:
        wait_for(lambda: vm(store, "vm1").status is Status.SCHEDULED_DEPLOY, 20, "vm1 placed")
        assert len(calls) > 3 and len(told(caplog, "injected by the test")) == 1
        assert leader(store) == "s1" and running.thread.is_alive() and scheduler.failure is None
    finally:
        running.end()
        host.close()


def test_a_failing_campaign_is_told_once_and_the_scheduler_leads_after(
        store: Store, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    election = scheduler.election
    try_to_lead, calls = failing_first(election._try_to_lead, 3, "a campaign failure, injected by the test")
    monkeypatch.setattr(election, "_try_to_lead", try_to_lead)
    running = Running(scheduler.run)
    try:
        wait_for(lambda: leader(store) == "s1", 20, "s1 leads")
        assert len(calls) == 4 and len(told(caplog, "injected by the test")) == 1
        assert running.thread.is_alive() and scheduler.failure is None
    finally:
        running.end()


def test_schedulers_outlive_an_etcd_stalled_past_their_leases_and_place_again(
        etcd_server: EtcdServer, store: Store, tmp_path: Path) -> None:
    """The other side: an outage is no failure. etcd SIGSTOPped for twice the leader's TTL (every
    watch falls silent, every call times out, the leadership is lost): both schedulers keep all
    their threads, one leads again afterwards, and it places a VM created after the outage."""
    ttl = 3
    conf = tmp_path / "ucloud.conf"
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS={etcd_server.endpoint}\nUCLOUD_LEADER_LEASE_TTL={ttl}\n"
                    "UCLOUD_ETCD_TIMEOUT=1\nUCLOUD_LOG_LEVEL=INFO\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    host = register_host(store, "h1", ttl=30)
    logs = contextlib.ExitStack()
    processes = [subprocess.Popen([str(BIN / "ucloud-scheduler"), "--config", str(conf), "run", "--name", name],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=logs.enter_context((tmp_path / f"{name}.log").open("w")))
                 for name in ("a", "b")]
    try:
        wait_for(lambda: leader(store) in ("a", "b"), 20, "a leader")
        etcd_server.stall(2 * ttl)
        write_retrying(store, "after-the-stall")
        took = wait_for(lambda: vm(store, "after-the-stall").status is Status.SCHEDULED_DEPLOY, 30,
                        "a placement after the stall")
        print(f"\nafter etcd stalled {2 * ttl} s: {leader(store)} leads; the VM created then was placed "
              f"{took:.1f} s later")
        assert all(p.poll() is None for p in processes), "a scheduler exited because of an outage"
        assert leader(store) in ("a", "b")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            assert process.wait(timeout=15) == 0, "an ordinary stop exits 0"
        logs.close()
        host.close()
