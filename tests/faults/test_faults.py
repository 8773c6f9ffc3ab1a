"""The fault suite: a real cluster (etcd, the API, two schedulers, three agents as simulated hosts,
QEMU, a one-node Ceph), faults injected into its processes, and after each one the checks of
`tests.helpers.faults`: legal transitions only, convergence to one QEMU on one live host, no QEMU
left on a host thought dead that can still write a shared disk, no daemon ended quietly, nothing
left after deletes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.ceph import CephServer
from tests.helpers.faults import (
    GIB,
    PATTERN,
    History,
    converged,
    daemons_sound,
    delete_all,
    garbage_everywhere,
    hmp,
    qemus,
    rbd_bytes,
    write_through,
)
from tests.helpers.processes import Cluster, running_cluster, wait_until
from ucloud_common.host import HOSTS, HostStatus
from ucloud_common.store.election import leader_key
from ucloud_common.vm import VMS

HOSTS_ = ("h1", "h2", "h3")
SCHEDULERS = ("s1", "s2")
SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}
LAST_BLOCK = GIB - 4096  # where a fenced QEMU tries to write: beyond anything the tiny image uses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ceph_server: CephServer) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("faults")
    with running_cluster(root, hosts=HOSTS_, schedulers=SCHEDULERS, UCLOUD_CEPH_CONF=str(ceph_server.conf),
                         UCLOUD_MAX_RESTARTS="2", UCLOUD_STABLE_AFTER="4",
                         # the load tests write far more than one user may keep by default
                         UCLOUD_MAX_NETWORKS_PER_USER="100000", UCLOUD_MAX_VMS_PER_USER="100000",
                         UCLOUD_MAX_CPU_PER_USER="100000", UCLOUD_MAX_RAM_PER_USER="100000",
                         UCLOUD_MAX_SSD_PER_USER="100000") as the_cluster:
        wait_until(lambda: all(_up(the_cluster, h) for h in HOSTS_), 60, "three hosts UP")
        yield the_cluster


@pytest.fixture
def history(cluster: Cluster) -> Iterator[History]:
    """Records the test's history; afterwards heals the cluster (as systemd and an operator would),
    judges the history, and deletes every VM, checking that nothing of any is left."""
    recorded = History(cluster)
    try:
        yield recorded
    finally:
        for process in [*cluster.agents.values(), *cluster.schedulers.values()]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
        quiet = daemons_sound(cluster)
        _restart_ended(cluster)
        wait_until(lambda: all(_up(cluster, h) for h in HOSTS_), 60, "three hosts UP again")
        for host in HOSTS_:
            _maintenance(cluster, host, False)
        recorded.stop()
        illegal = recorded.illegal_transitions()
        delete_all(cluster)
        assert not quiet, quiet
        assert not illegal, illegal


# -- helpers --------------------------------------------------------------------------------------

def _up(cluster: Cluster, host: str) -> bool:
    found = cluster.store.get(HOSTS, host)
    return found is not None and found.value.status is HostStatus.UP


def _restart_ended(cluster: Cluster) -> None:
    for host, process in list(cluster.agents.items()):
        if process.poll() is not None:
            cluster.start_agent(host)
    for name, process in list(cluster.schedulers.items()):
        if process.poll() is not None:
            cluster.start_scheduler(name)


def _maintenance(cluster: Cluster, host: str, on: bool) -> None:
    status, body = cluster.call("POST", f"/api/v1/hosts/{host}/maintenance", {"on": on})
    assert status == 200, body


def create(cluster: Cluster, name: str, storage: str = "local", suspended: bool = False,
           networks: tuple[str, ...] = ()) -> str:
    image = "tiny-rbd" if storage == "rbd" else "tiny"
    status, body = cluster.call("POST", "/api/v1/vms", {"name": name, "specs": SPECS, "image": image,
                                                         "storage": storage, "networks": list(networks)})
    assert status == 201, body
    uuid = str(body["uuid"])
    if suspended:
        cluster.wait(uuid, "RUNNING", timeout=90)
        act(cluster, uuid, "suspend")
    return uuid


def act(cluster: Cluster, uuid: str, action: str) -> None:
    status, body = cluster.call("POST", f"/api/v1/vms/{uuid}/{action}")
    assert status == 202, body


def host_of(cluster: Cluster, uuid: str) -> str:
    return str(cluster.vm(uuid)["hostname"]).rpartition("/")[2]


def events(cluster: Cluster, uuid: str) -> list[str]:
    return [e["message"] for e in cluster.call("GET", f"/api/v1/vms/{uuid}/events")[1]]


def on_one_host(cluster: Cluster, host: str, specs: list[tuple[str, str, bool]]) -> list[str]:
    """Create VMs (name, storage, suspended) that all land on `host`: the others are in maintenance
    meanwhile."""
    others = [h for h in HOSTS_ if h != host]
    for other in others:
        _maintenance(cluster, other, True)
    try:
        uuids = [create(cluster, name, storage, suspended) for name, storage, suspended in specs]
        converged(cluster, uuids, timeout=120)
    finally:
        for other in others:
            _maintenance(cluster, other, False)
    assert {host_of(cluster, u) for u in uuids} == {host}
    return uuids


def leader(cluster: Cluster) -> str:
    value, _ = cluster.store.client.get(leader_key("scheduler"))
    return value.decode() if value else ""


# -- host death: fencing and failover ---------------------------------------------------------------

@pytest.mark.parametrize("how", ["kill -9", "SIGSTOP"])
def test_an_agent_gone_past_its_lease_fences_its_host_and_its_vms_run_once(
        cluster: Cluster, history: History, ceph_server: CephServer, how: str) -> None:
    victim = "h1"
    rbd_idle, rbd_wrote, rbd_suspended, local_running, local_suspended = on_one_host(cluster, victim, [
        ("rbd-idle", "rbd", False), ("rbd-wrote", "rbd", False), ("rbd-suspended", "rbd", True),
        ("local-running", "local", False), ("local-suspended", "local", True)])
    shared = [rbd_idle, rbd_wrote, rbd_suspended]
    # One guest wrote (its QEMU holds the disk's exclusive lock); the others never did and hold none.
    write_through(cluster, victim, rbd_wrote, GIB // 2)
    assert rbd_bytes(ceph_server.conf, "vms", rbd_wrote, GIB // 2) == bytes([PATTERN]) * 4096
    old = {uuid: pids for uuid, pids in qemus(cluster.runs).items() if uuid in shared}

    process = cluster.agents[victim]
    died = time.monotonic()
    if how == "kill -9":
        process.kill()
        process.wait()
    else:
        os.kill(process.pid, signal.SIGSTOP)
    _rbd_moved(cluster, shared, victim, timeout=60)
    moved_in = time.monotonic() - died
    print(f"\n{how} of agent {victim}: {len(shared)} rbd VMs running elsewhere after {moved_in:.1f} s")

    for uuid in shared:
        assert old[uuid] == [(victim, old[uuid][0][1])], old[uuid]
        write_through(cluster, victim, uuid, LAST_BLOCK)
        assert rbd_bytes(ceph_server.conf, "vms", uuid, LAST_BLOCK) != bytes([PATTERN]) * 4096, \
            f"the QEMU left on {victim} could still write {uuid}'s disk"
    for uuid in (local_running, local_suspended):
        vm = cluster.vm(uuid)
        assert vm["status"] == "KILLED" and host_of(cluster, uuid) == victim, vm
        assert "local to that host" in vm["error"]

    if how == "kill -9":
        cluster.start_agent(victim)
    else:
        os.kill(process.pid, signal.SIGCONT)
    # Back: its local VMs are re-adopted (their QEMUs never stopped), its stale QEMUs of VMs that
    # moved are stopped, and every VM is as requested, with one QEMU each.
    converged(cluster, [*shared, local_running, local_suspended], timeout=60)
    assert "re-adopted its QEMU" in events(cluster, local_suspended)


def _rbd_moved(cluster: Cluster, uuids: list[str], victim: str, timeout: float) -> None:
    def moved() -> bool:
        vms = [cluster.vm(u) for u in uuids]
        return all(v["status"] == v["requested"] and v["hostname"] and not v["hostname"].endswith(f"/{victim}")
                   for v in vms)
    wait_until(moved, timeout, f"rbd VMs of {victim} running elsewhere")


# -- QEMU and guest faults ----------------------------------------------------------------------------

def test_a_killed_qemu_is_restarted_running_or_suspended(cluster: Cluster, history: History) -> None:
    status, network = cluster.call("POST", "/api/v1/networks", {"name": "q-net"})
    assert status == 201, network
    # With a NIC, so the deletes at the end also show that its MAC claim goes with the VM.
    uuids = [create(cluster, "q-run", networks=(network["uuid"],)), create(cluster, "q-susp", suspended=True),
             create(cluster, "q-rbd-susp", "rbd", suspended=True)]
    converged(cluster, uuids, timeout=120)
    before = qemus(cluster.runs)
    for uuid in uuids:
        os.kill(before[uuid][0][1], signal.SIGKILL)
    converged(cluster, uuids, timeout=60)
    after = qemus(cluster.runs)
    for uuid in uuids:
        assert after[uuid] != before[uuid]
        assert any(e.startswith("killed: QEMU exited unexpectedly") for e in events(cluster, uuid))
    delete_all(cluster)
    assert cluster.call("DELETE", f"/api/v1/networks/{network['uuid']}")[0] == 204


def test_a_guest_panic_is_reported_and_the_vm_restarted(cluster: Cluster, history: History) -> None:
    uuid = create(cluster, "panics")
    converged(cluster, [uuid], timeout=90)
    wait_until(lambda: "booted" in cluster.serial(host_of(cluster, uuid), uuid), 60, "the boot")
    host, pid = qemus(cluster.runs)[uuid][0]
    hmp(cluster, host, uuid, "nmi")  # the tiny guest panics on an NMI
    wait_until(lambda: "killed: the guest kernel panicked" in events(cluster, uuid), 30, "the panic reported")
    converged(cluster, [uuid], timeout=60)
    assert qemus(cluster.runs)[uuid][0][1] != pid


def test_crashes_far_apart_are_not_a_crash_loop(cluster: Cluster, history: History) -> None:
    """UCLOUD_MAX_RESTARTS=2 and UCLOUD_STABLE_AFTER=4 here: four crashes, each after 5 s of
    running, never reach ERROR."""
    uuid = create(cluster, "crashes")
    converged(cluster, [uuid], timeout=90)
    for crash in range(1, 5):
        time.sleep(5)
        os.kill(qemus(cluster.runs)[uuid][0][1], signal.SIGKILL)
        # KILLED lasts about a second (the first backoff): count it in the events, not by polling.
        wait_until(lambda: sum(e.startswith("killed: QEMU exited") for e in events(cluster, uuid)) == crash, 20,
                   f"crash {crash} reported")
        converged(cluster, [uuid], timeout=30)
    assert cluster.vm(uuid)["restarts"] == 1


# -- scheduler faults ------------------------------------------------------------------------------

def test_the_scheduler_leader_killed_or_stopped_is_replaced(cluster: Cluster, history: History) -> None:
    wait_until(lambda: leader(cluster) in SCHEDULERS, 20, "a leader")
    first = leader(cluster)
    cluster.schedulers[first].kill()
    cluster.schedulers[first].wait()
    uuid = create(cluster, "after-kill")
    converged(cluster, [uuid], timeout=60)
    second = leader(cluster)
    assert second != first
    cluster.start_scheduler(first)

    os.kill(cluster.schedulers[second].pid, signal.SIGSTOP)
    try:
        other = create(cluster, "after-stop")
        converged(cluster, [other], timeout=60)
        assert leader(cluster) == first
    finally:
        os.kill(cluster.schedulers[second].pid, signal.SIGCONT)
    # The deposed leader wakes up: its writes are refused, nothing is placed twice.
    third = create(cluster, "after-cont")
    converged(cluster, [uuid, other, third], timeout=60)
    assert cluster.schedulers[second].poll() is None


# -- etcd faults -----------------------------------------------------------------------------------

def test_etcd_killed_and_restarted_ten_times_under_load(cluster: Cluster, history: History) -> None:
    assert cluster.etcd is not None
    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, body = cluster.call("POST", "/api/v1/networks", {"name": f"load-{i}"})
            except OSError:
                continue
            if status == 201:
                acknowledged.append(("networks", body["uuid"]))
            else:
                assert status == 503 or status == 409, (status, body)  # etcd away: said so, never a 500
            time.sleep(0.05)

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    vms = []
    try:
        for round_ in range(10):
            subprocess.run(["kill", "-9", str(cluster.etcd.pid)], check=True)
            time.sleep(1.0)
            cluster.etcd.start()
            if round_ % 3 == 0:
                vms.append(_create_retrying(cluster, f"during-{round_}"))
            time.sleep(2.0)
    finally:
        stop.set()
        writer.join()
    converged(cluster, vms, timeout=120)
    missing = [uuid for kind, uuid in acknowledged if cluster.call("GET", f"/api/v1/{kind}/{uuid}")[0] != 200]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged writes lost"
    assert len(acknowledged) > 20
    for kind, uuid in acknowledged:
        cluster.call("DELETE", f"/api/v1/{kind}/{uuid}")


def _create_retrying(cluster: Cluster, name: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        status, body = cluster.call("POST", "/api/v1/vms", {"name": name, "specs": SPECS, "image": "tiny"})
        if status == 201:
            return str(body["uuid"])
        assert status == 503 and time.monotonic() < deadline, (status, body)
        time.sleep(0.5)


def test_compaction_while_daemons_are_stopped(cluster: Cluster, history: History) -> None:
    kept = create(cluster, "kept")
    converged(cluster, [kept], timeout=90)
    host = host_of(cluster, kept)
    stopped = [cluster.schedulers[s] for s in SCHEDULERS] + [cluster.agents[host]]
    for process in stopped:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        act(cluster, kept, "suspend")
        placed_later = create(cluster, "placed-later")
        gone = create(cluster, "gone")
        assert cluster.call("DELETE", f"/api/v1/vms/{gone}")[0] == 204
        revision = cluster.store.revision()
        cluster.store.client.compact(revision, physical=True)
        time.sleep(1)
    finally:
        for process in stopped:
            os.kill(process.pid, signal.SIGCONT)
    converged(cluster, [kept, placed_later], timeout=90)
    assert cluster.store.get(VMS, gone) is None


def test_garbage_under_every_prefix_hurts_no_daemon(cluster: Cluster, history: History) -> None:
    keys = garbage_everywhere(cluster)
    try:
        uuid = create(cluster, "amid-garbage")
        converged(cluster, [uuid], timeout=90)
        for path in ("/api/v1/vms", "/api/v1/hosts", "/api/v1/networks", "/api/v1/images", "/api/v1/files",
                     "/api/v1/users"):
            status, body = cluster.call("GET", path)
            assert status == 200, (path, status, body)
        time.sleep(2)
        assert all(p.poll() is None for p in [*cluster.agents.values(), *cluster.schedulers.values()])
    finally:
        for key in keys:
            cluster.store.client.delete(key)


def test_a_host_back_after_its_fence_restarts_its_vms_and_never_adopts_a_fenced_qemu(
        cluster: Cluster, history: History, ceph_server: CephServer) -> None:
    """Nowhere else to go: the dead host is fenced but its rbd VMs stay; when its agent returns,
    their old QEMUs (cut off from their disks) are replaced by new ones, not reported RUNNING."""
    victim = "h2"
    [uuid] = on_one_host(cluster, victim, [("fenced-stays", "rbd", False)])
    old_pid = qemus(cluster.runs)[uuid][0][1]
    for other in HOSTS_:
        if other != victim:
            _maintenance(cluster, other, True)
    process = cluster.agents[victim]
    os.kill(process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: bool((host := cluster.store.get(HOSTS, victim)) and host.value.fenced), 60, f"{victim} fenced")
    finally:
        os.kill(process.pid, signal.SIGCONT)
    converged(cluster, [uuid], timeout=60)
    assert qemus(cluster.runs)[uuid] != [(victim, old_pid)], "a QEMU cut off from its disk was adopted"
    write_through(cluster, host_of(cluster, uuid), uuid, LAST_BLOCK)
    assert rbd_bytes(ceph_server.conf, "vms", uuid, LAST_BLOCK) == bytes([PATTERN]) * 4096, "the new QEMU cannot write"
    wait_until(lambda: not cluster.store.get(HOSTS, victim).value.fenced, 30, f"{victim} unfenced")  # type: ignore[union-attr]
