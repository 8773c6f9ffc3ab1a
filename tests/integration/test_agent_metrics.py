"""The host agent's metrics and its VMs' figures, on a real etcd with the fake hypervisor: /metrics
on the agent's port moves when a VM starts and restarts, the figures the hypervisor reports reach
etcd and `GET /api/v1/vms/{uuid}/stats`, and leave with the VM."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from tests.helpers.cluster import vm, wait_for
from tests.helpers.etcd import free_port
from tests.helpers.metrics import scrape, value
from tests.integration.test_follow import a_vm
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings
from ucloud_common.metrics import serve
from ucloud_common.states import Requested, Status
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_common.vm import VMS, placed_on
from ucloud_common.vmstats import VM_STATS, DiskIO, NicIO, Usage
from ucloud_vm.agent import Agent
from ucloud_vm.fake_driver import FakeDriver

MAC = "52:54:00:12:34:56"
USED = Usage(cpu_seconds=3.5, rss_bytes=64 << 20, disks={"disk0": DiskIO(read_bytes=4096, written_bytes=512, reads=2,
                                                                            writes=1)},
             nics={MAC: NicIO(received_bytes=1000, sent_bytes=2000, received_packets=10, sent_packets=20)})


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """As tests/integration's, with the VMs sampled often."""
    return settings.model_copy(update={"host_check_interval": 0.3, "resync_interval": 600.0, "vm_stats_interval": 0.2})


@pytest.fixture
def metrics_url(agent: Agent) -> Iterator[str]:
    """The agent's /metrics served as `ucloud-vm run` serves it."""
    port = free_port()
    REGISTRY.register(agent.collector)
    server = serve("127.0.0.1", port, "UCLOUD_AGENT_METRICS_PORT")
    assert server is not None
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    REGISTRY.unregister(agent.collector)


@pytest.fixture
def running(agent: Agent) -> Iterator[Agent]:
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    yield agent
    stop.set()
    thread.join(timeout=15)


def test_a_vm_started_and_restarted_moves_the_agents_metrics_and_its_figures_reach_the_api(
        store: Store, settings: Settings, running: Agent, metrics_url: str) -> None:
    driver = running._driver
    assert isinstance(driver, FakeDriver)
    before = scrape(metrics_url)
    store.create(VMS, "u1", a_vm("u1").evolve(status=Status.SCHEDULED_DEPLOY, **placed_on("h1")))
    wait_for(lambda: vm(store, "u1").status is Status.RUNNING and "u1" in driver.guests, 15, "u1 running")
    driver.guests["u1"].usage = USED
    wait_for(lambda: (found := store.get(VM_STATS, "u1")) is not None and found.value.usage == USED, 10,
             "u1's figures in etcd")

    after = scrape(metrics_url)
    assert value(after, "ucloud_agent_vms", status="RUNNING") == 1
    assert value(after, "ucloud_agent_qemu_start_seconds_count") - value(before, "ucloud_agent_qemu_start_seconds_count") == 1
    assert value(after, "ucloud_agent_reconcile_seconds_count") > value(before, "ucloud_agent_reconcile_seconds_count")
    assert value(after, "ucloud_vm_cpu_seconds_total", vm="u1") == 3.5
    assert value(after, "ucloud_vm_rss_bytes", vm="u1") == 64 << 20
    assert value(after, "ucloud_vm_disk_read_bytes_total", vm="u1", drive="disk0") == 4096
    assert value(after, "ucloud_vm_network_sent_bytes_total", vm="u1", mac=MAC) == 2000

    driver.crash("u1")
    wait_for(lambda: vm(store, "u1").restarts >= 1 and vm(store, "u1").status is Status.RUNNING, 15, "u1 restarted")
    restarted = scrape(metrics_url)
    assert value(restarted, "ucloud_agent_vm_restarts_total") - value(before, "ucloud_agent_vm_restarts_total") == 1

    # The API shows the figures to the VM's owner (the agent publishes them; the API cannot reach QEMU).
    driver.guests["u1"].usage = USED
    wait_for(lambda: (found := store.get(VM_STATS, "u1")) is not None and found.value.usage == USED, 10, "figures again")
    client = create_app(settings, store).test_client()
    _, alice = create_user(store, "alice", Role.USER)
    _, bob = create_user(store, "bob", Role.USER)
    answer = client.get("/api/v1/vms/u1/stats", headers={"Authorization": f"Bearer {alice}"})
    assert answer.status_code == 200, answer.json
    assert answer.json["host"] == "h1" and answer.json["usage"]["cpu_seconds"] == 3.5
    assert answer.json["usage"]["disks"]["disk0"]["read_bytes"] == 4096
    assert answer.json["usage"]["nics"][MAC]["sent_bytes"] == 2000
    assert client.get("/api/v1/vms/u1/stats", headers={"Authorization": f"Bearer {bob}"}).status_code == 404

    # A deleted VM's figures go with it, from etcd and from /metrics.
    store.update(VMS, "u1", lambda v: v.evolve(requested=Requested.DELETED, generation=v.generation + 1))
    wait_for(lambda: store.get(VMS, "u1") is None and store.get(VM_STATS, "u1") is None, 15, "u1 and its figures gone")
    assert value(scrape(metrics_url), "ucloud_vm_cpu_seconds_total", vm="u1") == 0


def test_a_vm_without_a_running_qemu_has_no_figures_and_says_why(store: Store, settings: Settings) -> None:
    store.create(VMS, "u2", a_vm("u2"))
    client = create_app(settings, store).test_client()
    _, alice = create_user(store, "alice", Role.USER)
    answer = client.get("/api/v1/vms/u2/stats", headers={"Authorization": f"Bearer {alice}"})
    assert answer.status_code == 409 and answer.json["error"]["code"] == "no_stats"
    assert "it is REQUESTED_NEW" in answer.json["error"]["message"]
