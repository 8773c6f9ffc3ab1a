"""The first VM booted end to end: API → scheduler → agent → QEMU, and back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.helpers.processes import Cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.vm import VMS
from ucloud_vm.paths import VMPaths
from ucloud_vm.qemu import execute

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


def qemus_of(uuid: str) -> list[int]:
    """Live QEMU processes of a VM, found by their command line (zombies do not count)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if cmdline.startswith(b"qemu-system") and f"guest={uuid}".encode() in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def create(cluster: Cluster, name: str) -> str:
    status, body = cluster.call("POST", "/api/v1/vms", {"name": name, "specs": SPECS, "image": "tiny"})
    assert status == 201, body
    return str(body["uuid"])


def act(cluster: Cluster, uuid: str, action: str) -> None:
    status, body = cluster.call("POST", f"/api/v1/vms/{uuid}/{action}")
    assert status == 202, body


def events(cluster: Cluster, uuid: str) -> list[str]:
    return [e["message"] for e in cluster.call("GET", f"/api/v1/vms/{uuid}/events")[1]]


def test_create_suspend_resume_shutdown_start_reboot_delete(cluster: Cluster) -> None:
    uuid = create(cluster, "first")
    vm = cluster.wait(uuid, "RUNNING", timeout=30)
    assert vm["hostname"] == "/v1/host/h1" and vm["observed_generation"] == vm["generation"]
    wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 60, "the serial line")
    pid = cluster.qemu_pid("h1", uuid)

    act(cluster, uuid, "suspend")
    cluster.wait(uuid, "SUSPENDED", timeout=10)
    act(cluster, uuid, "resume")
    cluster.wait(uuid, "RUNNING", timeout=10)
    assert cluster.qemu_pid("h1", uuid) == pid

    act(cluster, uuid, "shutdown")
    cluster.wait(uuid, "STOPPED", timeout=30)
    assert "stopped: the guest powered off (ACPI)" in events(cluster, uuid), events(cluster, uuid)
    # A step is recorded before it is carried out: the stopped guest's QEMU goes a moment later.
    wait_until(lambda: cluster.qemu_pid("h1", uuid) is None, 10, "the stopped VM's QEMU gone")

    act(cluster, uuid, "start")
    cluster.wait(uuid, "RUNNING", timeout=30)
    wait_until(lambda: cluster.serial("h1", uuid).count(BOOTED) == 2, 60, "the second boot")

    act(cluster, uuid, "reboot")
    wait_until(lambda: cluster.serial("h1", uuid).count(BOOTED) == 3, 60, "the boot after reboot")
    assert "rebooted" in events(cluster, uuid)
    assert cluster.vm(uuid)["status"] == "RUNNING"

    status, _ = cluster.call("DELETE", f"/api/v1/vms/{uuid}")
    assert status == 202
    wait_until(lambda: cluster.call("GET", f"/api/v1/vms/{uuid}")[0] == 404, 30, "deletion")
    assert cluster.store.get(VMS, uuid) is None
    assert not (cluster.run_dir("h1") / "vms" / uuid).exists()
    assert not (cluster.root / "disks" / f"{uuid}.qcow2").exists()
    assert not qemus_of(uuid), "a QEMU is left"


def test_a_killed_qemu_is_restarted(cluster: Cluster) -> None:
    uuid = create(cluster, "crashy")
    cluster.wait(uuid, "RUNNING", timeout=30)
    wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 60, "the first boot")
    pid = cluster.qemu_pid("h1", uuid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    cluster.wait(uuid, "RUNNING", timeout=30, restarts=1)
    assert cluster.qemu_pid("h1", uuid) not in (None, pid)
    messages = events(cluster, uuid)
    assert any(m.startswith("killed: QEMU exited unexpectedly") for m in messages), messages
    assert any(m.startswith("restarted") for m in messages), messages
    wait_until(lambda: cluster.serial("h1", uuid).count(BOOTED) == 2, 60, "the boot after the restart")


def test_the_agent_hears_of_a_crash_from_qemu_without_looking(cluster: Cluster) -> None:
    """The agent's monitor and its resync of the VMs wait 10 minutes here: the crash is heard on
    QEMU's events monitor (its end), and the VM restarted all the same; so is a guest paused behind
    its back."""
    cluster.restart_agent("h1", UCLOUD_MONITOR_INTERVAL="600", UCLOUD_MONITOR_SWEEP_INTERVAL="600",
                          UCLOUD_RESYNC_INTERVAL="600")
    try:
        uuid = create(cluster, "heard")
        cluster.wait(uuid, "RUNNING", timeout=30)
        time.sleep(2)  # its events followed (the agent subscribes right after its first look)
        paths = cluster.run_dir("h1") / "vms" / uuid
        execute(VMPaths(paths), "stop")  # not asked for: the agent resumes it (RUNNING is requested)
        wait_until(lambda: any("resumed" in m for m in events(cluster, uuid)), 20, "the paused guest resumed")
        pid = cluster.qemu_pid("h1", uuid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        cluster.wait(uuid, "RUNNING", timeout=15, restarts=1)
        assert any(m.startswith("killed: QEMU exited unexpectedly") for m in events(cluster, uuid))
    finally:
        cluster.restart_agent("h1")


def test_a_killed_agent_leaves_its_vms_running_and_readopts_them(cluster: Cluster) -> None:
    uuid = create(cluster, "steady")
    cluster.wait(uuid, "RUNNING", timeout=30)
    wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 60, "the serial line")
    pid = cluster.qemu_pid("h1", uuid)
    before = events(cluster, uuid)
    cluster.stop_agent("h1", signal.SIGKILL)
    time.sleep(1)
    assert cluster.qemu_pid("h1", uuid) == pid, "the VM died with its agent"
    cluster.start_agent("h1")
    time.sleep(4)  # the new agent has listed, reconciled and monitored by now
    assert cluster.qemu_pid("h1", uuid) == pid, "the VM was restarted"
    assert cluster.vm(uuid)["status"] == "RUNNING"
    assert events(cluster, uuid) == before, "the new agent changed something"
    assert cluster.serial("h1", uuid).count(BOOTED) == 1


def test_two_agents_share_the_vms(cluster: Cluster) -> None:
    cluster.start_agent("h2")
    wait_until(lambda: cluster.call("GET", "/api/v1/hosts/h2")[0] == 200 and
               cluster.call("GET", "/api/v1/hosts/h2")[1]["alive"], 20, "h2 registered")
    # One anti-affinity group: two hosts, whatever earlier tests left running on h1 (spread would
    # fill the new, empty h2 first).
    uuids = []
    for i in range(2):
        status, body = cluster.call("POST", "/api/v1/vms", {"name": f"spread{i}", "specs": SPECS, "image": "tiny",
                                                            "anti_affinity": "spread"})
        assert status == 201, body
        uuids.append(str(body["uuid"]))
    hosts = [cluster.wait(u, "RUNNING", timeout=60)["hostname"] for u in uuids]
    assert set(hosts) == {"/v1/host/h1", "/v1/host/h2"}, hosts
    for u in uuids:
        host = cluster.vm(u)["hostname"].rsplit("/", 1)[1]
        wait_until(lambda: BOOTED in cluster.serial(host, u), 60, f"{u} booted on {host}")


def test_a_vm_whose_image_no_host_holds_waits_with_the_reason_and_the_others_go_on(cluster: Cluster) -> None:
    from ucloud_common.image import IMAGES, Image, ImageStatus

    cluster.store.create(IMAGES, "ghost", Image(uuid="ghost", owner="admin", name="ghost", store_name="local",
                                                public=True, status=ImageStatus.CREATED))
    cluster.store.client.put("/v1/vm/garbage", b"{not a vm")
    status, body = cluster.call("POST", "/api/v1/vms", {"name": "broken", "specs": SPECS, "image": "ghost"})
    assert status == 201
    # No host holds the image: the VM waits with the scheduler's reason, and the others go on.
    wait_until(lambda: "no host holds image ghost" in cluster.vm(body["uuid"])["error"], 30, "the reason told")
    assert cluster.vm(body["uuid"])["status"] == "REQUESTED_NEW"
    fine = create(cluster, "fine")
    cluster.wait(fine, "RUNNING", timeout=30)
    log = "".join(p.read_text() for p in cluster.root.glob("agent-*.log"))
    assert "skipping invalid record /v1/vm/garbage" in log
    status, _ = cluster.call("DELETE", f"/api/v1/vms/{body['uuid']}")
    assert status == 204  # never placed: nothing to clean up anywhere, gone at once
    assert cluster.call("GET", f"/api/v1/vms/{body['uuid']}")[0] == 404


def test_a_live_host_recorded_down_says_up_again(cluster: Cluster) -> None:
    from ucloud_common.host import HOSTS, HostStatus

    cluster.store.update(HOSTS, "h1", lambda h: h.evolve(status=HostStatus.DOWN))
    wait_until(lambda: cluster.store.get(HOSTS, "h1").value.status is HostStatus.UP, 15,  # type: ignore[union-attr]
               "h1 UP again")


def test_an_error_vm_whose_qemu_runs_is_adopted(cluster: Cluster) -> None:
    """What a start left when QEMU started but its first QMP answer failed: the record says ERROR
    and the QEMU runs. The old agent wrote RUNNING over ERROR (a move the state table refuses) and
    retried every 5 s for ever; now the QEMU is adopted, never started twice."""
    from ucloud_common.states import Status

    uuid = create(cluster, "adoptee")
    host = cluster.wait(uuid, "RUNNING", timeout=30)["hostname"].rsplit("/", 1)[1]  # h1 or h2, as spread chose
    pid = cluster.qemu_pid(host, uuid)
    cluster.stop_agent(host, signal.SIGKILL)
    cluster.store.update(VMS, uuid, lambda vm: vm.evolve(status=Status.ERROR, error="QMP query-status failed"))
    cluster.start_agent(host)
    # Waited for by its event: the API's cache may still show the RUNNING from before the ERROR
    # written here behind its back (read-your-writes covers a client's writes through the API only).
    wait_until(lambda: "re-adopted its QEMU" in events(cluster, uuid), 30, "the QEMU re-adopted")
    vm = cluster.wait(uuid, "RUNNING", timeout=30)
    assert vm["error"] == "" and cluster.qemu_pid(host, uuid) == pid


def test_the_owners_keys_reach_the_vm_on_its_cloud_init_drive(cluster: Cluster, tmp_path: Path) -> None:
    """A NoCloud seed (`cidata`) with the VM's keys, its name and its NICs, made afresh at each start
    and given to QEMU as a read-only second drive (the guest's disk stays the first)."""
    import subprocess

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@laptop"
    status, body = cluster.call("POST", "/api/v1/ssh-keys", {"name": "laptop", "key": key})
    assert status == 201, body
    status, body = cluster.call("POST", "/api/v1/vms", {"name": "keyed", "specs": SPECS, "image": "tiny",
                                                        "ssh_keys": ["laptop"]})
    assert status == 201, body
    uuid = body["uuid"]
    host = cluster.wait(uuid, "RUNNING", timeout=30)["hostname"].rsplit("/", 1)[1]
    seed = cluster.run_dir(host) / "vms" / uuid / "cidata.img"
    copy = tmp_path / "cidata.img"  # mtools locks what it reads, and the running QEMU holds a lock on it
    copy.write_bytes(seed.read_bytes())
    user_data = subprocess.run(["mtype", "-i", str(copy), "::user-data"], capture_output=True, text=True,
                               check=True).stdout
    assert user_data.startswith("#cloud-config") and key in user_data
    label = subprocess.run(["mlabel", "-s", "-i", str(copy), "::"], capture_output=True, text=True).stdout
    assert "CIDATA" in label
    (pid,) = qemus_of(uuid)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    drives = [a.decode() for a in argv if a.startswith(b"file=")]
    assert "id=disk0" in drives[0] and str(seed) in drives[1] and "readonly=on" in drives[1], drives
    # The tiny guest reads the drive as cloud-init would and says what it took.
    wait_until(lambda: "ucloud-tiny: cidata 1 keys, hostname keyed" in cluster.serial(host, uuid), 60,
               "the guest reading its cidata drive")
