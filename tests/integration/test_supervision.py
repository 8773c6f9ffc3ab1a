"""A daemon whose essential thread dies stops, gives up its leadership or lease, and exits non-zero
so that systemd restarts it: it never lives on half-blind. Against a real etcd."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ucloud_scheduler.scheduler
import ucloud_vm.agent
from tests.helpers.cluster import register_host, vm, wait_for
from tests.helpers.etcd import EtcdServer
from tests.helpers.poison import POISON, poisoned
from tests.integration.test_follow import a_vm, write_retrying
from ucloud_common.config import Settings
from ucloud_common.host import HOSTS_ALIVE
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VMS
from ucloud_scheduler.fencing import NoFence
from ucloud_scheduler.scheduler import Scheduler
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.qemu import QemuDriver
from ucloud_vm.storage import LocalStorage

REPO = Path(__file__).resolve().parents[2]
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


def test_a_scheduler_whose_follower_dies_resigns_and_a_standby_takes_over(
        store: Store, long_ttl: Settings, stores: list[Store], monkeypatch: pytest.MonkeyPatch) -> None:
    stores += [Store(long_ttl), Store(long_ttl)]
    with monkeypatch.context() as patched:  # only this one: the standby's followers are real
        patched.setattr(ucloud_scheduler.scheduler, "Follower", poisoned(ucloud_scheduler.scheduler.Follower))
        doomed = Scheduler(stores[0], long_ttl, NoFence(), candidate="doomed")
    first = Running(doomed.run)
    wait_for(lambda: leader(store) == "doomed", 10, "the doomed scheduler leads")
    standby = Scheduler(stores[1], long_ttl, NoFence(), candidate="standby")
    second = Running(standby.run)
    try:
        store.create(VMS, POISON, a_vm(POISON))
        poisoned_at = time.monotonic()
        first.thread.join(timeout=10)
        assert not first.thread.is_alive(), "the scheduler lives on without its VM follower"
        assert doomed.failure is not None and doomed.failure.startswith(
            "essential thread follow-vm raised RuntimeError: a bug, injected by the test")
        ended = time.monotonic() - poisoned_at
        # Its lease would keep the key for at least 7.5 s: gone already, it was given up.
        assert leader(store) != "doomed", "the dead leader did not give up its leadership"
        wait_for(lambda: leader(store) == "standby", TTL, "the standby leads")
        took = time.monotonic() - poisoned_at
        print(f"\nthe leader stopped {ended:.2f} s after its follower died, leadership given up; the standby "
              f"leads {took:.2f} s after (lease TTL {TTL} s)")
    finally:
        second.end()
        first.end()


def test_an_agent_whose_follower_dies_revokes_its_lease_and_stops(
        store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ucloud_vm.agent, "Follower", poisoned(ucloud_vm.agent.Follower))
    agent = Agent(store, settings, HostSpec("h1", "127.0.0.1", Specs(cpu=1, ram=1, ssd=1)),
                  QemuDriver(tmp_path / "run", "tcg"), {"local": LocalStorage(tmp_path / "images", tmp_path / "disks")})
    running = Running(agent.run)
    try:
        wait_for(lambda: store.get(HOSTS_ALIVE, "h1") is not None, 10, "h1 registered")
        store.create(VMS, POISON, a_vm(POISON))
        running.thread.join(timeout=10)
        assert not running.thread.is_alive(), "the agent lives on without its VM follower"
        assert agent.failure is not None and "follow-vm raised RuntimeError" in agent.failure
        assert store.get(HOSTS_ALIVE, "h1") is None, "the host's lease was not given up"
    finally:
        running.end()


def test_a_failing_monitor_tick_is_logged_and_the_agent_goes_on(
        store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(store, settings, HostSpec("h1", "127.0.0.1", Specs(cpu=1, ram=1, ssd=1)),
                  QemuDriver(tmp_path / "run", "tcg"), {"local": LocalStorage(tmp_path / "images", tmp_path / "disks")})
    ticks: list[int] = []

    def failing_tick() -> None:
        ticks.append(len(ticks))
        raise ValueError("a garbage host record")

    monkeypatch.setattr(agent, "monitor_tick", failing_tick)
    running = Running(agent.run)
    try:
        wait_for(lambda: len(ticks) >= 3, 10, "three monitor ticks")
        assert running.thread.is_alive() and agent.failure is None
        assert "monitoring failed this tick" in caplog.text
    finally:
        running.end()
    assert agent.failure is None


def test_a_scheduler_process_whose_follower_dies_exits_1_and_the_standby_takes_over(
        etcd_server: EtcdServer, store: Store, tmp_path: Path) -> None:
    conf = tmp_path / "ucloud.conf"
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS={etcd_server.endpoint}\nUCLOUD_LEADER_LEASE_TTL={TTL}\n"
                    "UCLOUD_ETCD_TIMEOUT=1\nUCLOUD_LOG_LEVEL=INFO\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}, "PYTHONPATH": str(REPO)}
    log = tmp_path / "doomed.log"
    with log.open("w") as stderr:
        doomed = subprocess.Popen([sys.executable, "-m", "tests.helpers.poison", "ucloud-scheduler", "--config",
                                   str(conf), "run", "--name", "doomed"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    standby: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: leader(store) == "doomed", 20, "the doomed scheduler leads")
        standby = subprocess.Popen([str(BIN / "ucloud-scheduler"), "--config", str(conf), "run", "--name",
                                    "standby"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # the standby is up and waiting for a vacancy
        store.create(VMS, POISON, a_vm(POISON))
        poisoned_at = time.monotonic()
        assert doomed.wait(timeout=15) == 1
        exited = time.monotonic() - poisoned_at
        # Its lease (TTL 10 s, renewed every 2.5 s) would keep the key for 7.5 s at least: gone
        # already, the key was given up before the process exited.
        assert leader(store) != "doomed", "the dead leader did not give up its leadership"
        wait_for(lambda: leader(store) == "standby", TTL, "the standby leads")
        took = time.monotonic() - poisoned_at
        said = log.read_text()
        last = said.strip().splitlines()[-1]
        print(f"\nscheduler process exited 1 {exited:.2f} s after the poison, its leadership given up; the "
              f"standby leads {took:.2f} s after the poison (TTL {TTL} s); it said: {last}")
        assert last.startswith("Error: ucloud-scheduler doomed stopped: essential thread follow-vm raised "
                               "RuntimeError")
    finally:
        for process in (doomed, standby):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


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
