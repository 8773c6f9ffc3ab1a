"""`ucloud` against the real API (gunicorn), a real etcd, scheduler and agent (real QEMU)."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import Cluster, running_cluster
from tests.helpers.tiny import tiny_image
from tests.helpers.etcd import free_port

BIN = Path(sys.executable).parent
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cli-cluster")
    with running_cluster(root, UCLOUD_HDD_DIR=str(root / "hdd")) as the_cluster:
        yield the_cluster


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def ucloud(home: Path, *args: str, cluster: Cluster | None = None, token: str | None = None,
           url: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    if cluster is not None:
        env["UCLOUD_API_URL"] = url or f"http://127.0.0.1:{cluster.api_port}"
        env["UCLOUD_TOKEN"] = token or cluster.token
    return subprocess.run([str(BIN / "ucloud"), *args], env=env, capture_output=True, text=True, timeout=120,
                          input=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_login_writes_a_private_config(cluster: Cluster, home: Path) -> None:
    url = f"http://127.0.0.1:{cluster.api_port}"
    out = ok(ucloud(home, "login", "--url", url, stdin=cluster.token + "\n"))
    config = home / ".config" / "ucloud" / "config"
    assert str(config) in out and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert cluster.token in config.read_text()
    assert ucloud(home, "vm", "list").returncode == 0  # no environment needed now
    one_error_line(ucloud(home, "login", "--url", url, "--token", "bad.token"), 1)


def test_not_logged_in(home: Path) -> None:
    assert "not logged in" in one_error_line(ucloud(home, "vm", "list"), 2)


def test_vm_lifecycle_with_wait(cluster: Cluster, home: Path) -> None:
    created = as_json(ucloud(home, "vm", "create", "cli1", "--ram", "0.25", "--ssd", "1", "--image", "tiny",
                             "--wait", "-o", "json", cluster=cluster))
    assert created["status"] == "RUNNING" and created["name"] == "cli1"
    uuid = created["uuid"]
    table = ok(ucloud(home, "vm", "list", cluster=cluster))
    header, row = table.splitlines()[0], next(line for line in table.splitlines() if uuid in line)
    assert header.split()[:4] == ["UUID", "NAME", "STATUS", "REQUESTED"] and "RUNNING" in row and "h1" in row
    assert [v["uuid"] for v in as_json(ucloud(home, "vm", "list", "--status", "RUNNING", "-o", "json",
                                              cluster=cluster))] == [uuid]
    shown = ok(ucloud(home, "vm", "show", uuid, cluster=cluster))
    assert "status" in shown and "RUNNING" in shown
    suspended = ucloud(home, "vm", "suspend", uuid, "--wait", "-o", "json", cluster=cluster)
    assert as_json(suspended)["status"] == "SUSPENDED" and "cli1: SUSPENDED" in suspended.stderr
    assert as_json(ucloud(home, "vm", "resume", uuid, "--wait", "-o", "json", cluster=cluster))["status"] == "RUNNING"
    assert as_json(ucloud(home, "vm", "reboot", uuid, "--wait", "-o", "json", cluster=cluster))["status"] == "RUNNING"
    stopped = ucloud(home, "vm", "shutdown", uuid, "--wait", "-o", "json", cluster=cluster)
    assert as_json(stopped)["status"] == "STOPPED" and "cli1: STOPPING" in stopped.stderr
    assert as_json(ucloud(home, "vm", "start", uuid, "--wait", "-o", "json", cluster=cluster))["status"] == "RUNNING"
    events = as_json(ucloud(home, "vm", "events", uuid, "-o", "json", cluster=cluster))
    assert any(e["message"].startswith("placed on h1") for e in events)
    assert "MESSAGE" in ok(ucloud(home, "vm", "events", uuid, cluster=cluster))
    refused = one_error_line(ucloud(home, "vm", "resume", uuid, cluster=cluster), 1)
    assert "cannot resume: the VM is RUNNING" in refused
    assert "deleted" in ok(ucloud(home, "vm", "delete", uuid, "--wait", cluster=cluster))
    assert "does not exist" in one_error_line(ucloud(home, "vm", "show", uuid, cluster=cluster), 1)


def virtual_gib(path: Path) -> float:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True,
                          text=True).stdout
    return int(json.loads(info)["virtual-size"]) / 1024**3


def test_resize_a_stopped_vm_whose_disks_grow_at_its_next_start(cluster: Cluster, home: Path) -> None:
    created = as_json(ucloud(home, "vm", "create", "grow1", "--ram", "0.25", "--ssd", "2", "--image", "tiny",
                             "--wait", "-o", "json", cluster=cluster))
    uuid = created["uuid"]
    refused = one_error_line(ucloud(home, "vm", "resize", "grow1", "--ssd", "3", cluster=cluster), 1)
    assert "cannot resize: the VM is RUNNING (resize is possible when it is STOPPED)" in refused
    assert "name at least one of" in one_error_line(ucloud(home, "vm", "resize", "grow1", cluster=cluster), 2)
    ok(ucloud(home, "vm", "shutdown", "grow1", "--wait", cluster=cluster))
    assert "disks only grow" in one_error_line(ucloud(home, "vm", "resize", "grow1", "--ssd", "1", cluster=cluster), 1)
    resized = ucloud(home, "vm", "resize", "grow1", "--cpu", "2", "--ram", "0.5", "--ssd", "3", "--hdd", "1",
                     "--wait", "-o", "json", cluster=cluster)
    assert as_json(resized)["specs"] == {"cpu": 2, "ram": 0.5, "ssd": 3, "hdd": 1} and "resized" in resized.stderr
    assert virtual_gib(cluster.root / "disks" / f"{uuid}.qcow2") == 2, "grown at the next start, not before"
    # Past the quota: refused when asked. Within a raised quota but past the host's room: by the scheduler.
    assert "quota hdd" in one_error_line(ucloud(home, "vm", "resize", "grow1", "--hdd", "1000000", cluster=cluster), 1)
    ok(ucloud(home, "quota", "set", "admin", "--hdd", "1000000", cluster=cluster))
    too_big = ucloud(home, "vm", "resize", "grow1", "--hdd", "1000000", "--wait", cluster=cluster)
    assert "was not resized: resize refused: its host h1 has" in one_error_line(too_big, 1)
    ok(ucloud(home, "quota", "set", "admin", "--default", "hdd", cluster=cluster))
    assert as_json(ucloud(home, "vm", "show", "grow1", "-o", "json", cluster=cluster))["specs"]["hdd"] == 1
    started = as_json(ucloud(home, "vm", "start", "grow1", "--wait", "-o", "json", cluster=cluster))
    assert started["status"] == "RUNNING"
    assert virtual_gib(cluster.root / "disks" / f"{uuid}.qcow2") == 3
    assert virtual_gib(cluster.root / "hdd" / f"{uuid}-hdd.qcow2") == 1
    command_line = (cluster.run_dir("h1") / "vms" / uuid / "qemu.pid").read_text().strip()
    argv = Path(f"/proc/{command_line}/cmdline").read_bytes().split(b"\0")
    assert b"-smp" in argv and argv[argv.index(b"-smp") + 1] == b"2" and argv[argv.index(b"-m") + 1] == b"512"
    assert "HDD" in ok(ucloud(home, "vm", "list", cluster=cluster)).splitlines()[0]
    ok(ucloud(home, "vm", "delete", "grow1", "--wait", cluster=cluster))
    assert not (cluster.root / "hdd" / f"{uuid}-hdd.qcow2").exists()


def test_wait_fails_with_the_reason_on_error(cluster: Cluster, home: Path) -> None:
    from ucloud_common.image import IMAGES, Image, ImageStatus

    if cluster.store.get(IMAGES, "void") is None:
        cluster.store.create(IMAGES, "void", Image(uuid="void", owner="admin", name="void", store_name="local",
                                                   public=True, status=ImageStatus.CREATED))
    # No host holds the image: the VM waits for one, and the wait ends with the scheduler's reason.
    failed = ucloud(home, "vm", "create", "doomed", "--ram", "0.25", "--ssd", "1", "--image", "void", "--wait",
                    "--timeout", "10", cluster=cluster)
    assert failed.returncode == 1, failed.stderr
    assert "is still REQUESTED_NEW after 10 s (waiting for RUNNING): no host holds image void" in failed.stderr
    assert "doomed: REQUESTED_NEW" in failed.stderr


def test_networks_keys_images_files(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    net = as_json(ucloud(home, "network", "create", "n1", "--ipv6-prefix", "2001:db8:7::/64", "-o", "json",
                         cluster=cluster))
    assert net["ipv6_prefix"] == "2001:db8:7::/64"
    assert "VXLAN" in ok(ucloud(home, "network", "list", cluster=cluster))
    assert as_json(ucloud(home, "network", "show", net["uuid"], "-o", "json", cluster=cluster))["name"] == "n1"
    vm = as_json(ucloud(home, "vm", "create", "netvm", "--ram", "0.25", "--ssd", "1", "--image", "tiny", "-o",
                        "json", cluster=cluster))
    attached = as_json(ucloud(home, "network", "attach", net["uuid"], vm["uuid"], "-o", "json", cluster=cluster))
    assert attached["networks"][0]["network"] == net["uuid"]
    assert "detach it first" in one_error_line(ucloud(home, "network", "delete", net["uuid"], cluster=cluster), 1)
    # Names work wherever a uuid does.
    ok(ucloud(home, "network", "detach", "n1", "netvm", cluster=cluster))
    assert as_json(ucloud(home, "vm", "show", "netvm", "-o", "json", cluster=cluster))["networks"] == []
    ok(ucloud(home, "vm", "delete", "netvm", "--wait", cluster=cluster))
    named = as_json(ucloud(home, "vm", "create", "netvm2", "--ram", "0.25", "--ssd", "1", "--image", "tiny",
                           "--network", "n1", "-o", "json", cluster=cluster))
    assert [nic["network"] for nic in named["networks"]] == [net["uuid"]]
    assert named["networks"][0]["ipv6"].startswith("2001:db8:7:0:")
    assert "network 'n2' does not exist" in one_error_line(
        ucloud(home, "vm", "create", "netvm3", "--image", "tiny", "--network", "n2", cluster=cluster), 1)
    ok(ucloud(home, "vm", "delete", "netvm2", "--wait", cluster=cluster))
    # An admin sees every owner's networks: a name two owners use is refused, not guessed.
    erin = as_json(ucloud(home, "user", "create", "erin", "-o", "json", cluster=cluster))
    ok(ucloud(home, "network", "create", "n1", cluster=cluster, token=erin["token"]))
    assert "2 networks are named 'n1' (owners admin, erin): give the uuid" in one_error_line(
        ucloud(home, "network", "show", "n1", cluster=cluster), 1)
    assert as_json(ucloud(home, "network", "show", "n1", "-o", "json", cluster=cluster,
                          token=erin["token"]))["owner"] == "erin"
    assert "deleted" in ok(ucloud(home, "network", "delete", "n1", cluster=cluster, token=erin["token"]))
    assert "deleted" in ok(ucloud(home, "network", "delete", net["uuid"], cluster=cluster))
    ok(ucloud(home, "user", "delete", "erin", cluster=cluster))

    key_file = tmp_path / "id.pub"
    key_file.write_text(ED25519 + "\n")
    ok(ucloud(home, "ssh-key", "add", "laptop", str(key_file), cluster=cluster))
    assert as_json(ucloud(home, "ssh-key", "list", "-o", "json", cluster=cluster)) == [{"name": "laptop", "key": ED25519}]
    assert "laptop" in ok(ucloud(home, "ssh-key", "list", cluster=cluster))
    ok(ucloud(home, "ssh-key", "delete", "laptop", cluster=cluster))
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert "not an OpenSSH public key" in one_error_line(ucloud(home, "ssh-key", "add", "x", str(bad), cluster=cluster), 1)

    images = as_json(ucloud(home, "image", "list", "-o", "json", cluster=cluster))
    assert "tiny" in {i["uuid"] for i in images}
    assert "STORE" in ok(ucloud(home, "image", "list", cluster=cluster))
    assert as_json(ucloud(home, "file", "list", "-o", "json", cluster=cluster)) == []
    assert "file 'nope' does not exist" in one_error_line(
        ucloud(home, "image", "create", "x", "--file", "nope", cluster=cluster), 1)
    assert "does not exist" in one_error_line(ucloud(home, "image", "delete", "nope", cluster=cluster), 1)


def test_a_user_without_a_shell_uploads_makes_an_image_runs_a_vm_and_is_deleted_with_it_all(
        cluster: Cluster, home: Path) -> None:
    """`ucloud file upload` → `ucloud image create` → `ucloud vm create --image NAME`: a user needed a
    shell on the upload machine to put a file in their folder; then `ucloud user delete --cascade
    --wait` takes it all away again (a plain delete refuses, saying what the user owns)."""
    token = as_json(ucloud(home, "user", "create", "uma", "-o", "json", cluster=cluster))["token"]
    stored = as_json(ucloud(home, "file", "upload", str(tiny_image() / "tiny.qcow2"), "--name", "my.qcow2", "-o",
                            "json", cluster=cluster, token=token))
    assert stored["filename"] == "my.qcow2" and stored["size"] == (tiny_image() / "tiny.qcow2").stat().st_size
    assert "already have a file my.qcow2" in one_error_line(ucloud(
        home, "file", "upload", str(tiny_image() / "tiny.qcow2"), "--name", "my.qcow2", cluster=cluster, token=token), 1)
    for job in ("ucloud-filescan", "ucloud-imagescanner"):
        if job == "ucloud-imagescanner":
            ok(ucloud(home, "image", "create", "mine", "--file", "my.qcow2", cluster=cluster, token=token))
        ran = subprocess.run([str(BIN / job), "run"], env=cluster.env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
    image = as_json(ucloud(home, "image", "list", "-o", "json", cluster=cluster, token=token))
    assert [i["status"] for i in image if i["name"] == "mine"] == ["CREATED"], image
    vm = as_json(ucloud(home, "vm", "create", "up1", "--ram", "0.25", "--ssd", "1", "--image", "mine", "--wait",
                        "-o", "json", cluster=cluster, token=token))
    assert vm["status"] == "RUNNING"
    refused = one_error_line(ucloud(home, "user", "delete", "uma", cluster=cluster), 1)
    assert "1 VM (up1)" in refused and "1 image (mine)" in refused and "1 file (my.qcow2)" in refused
    deleted = ucloud(home, "user", "delete", "uma", "--cascade", "--wait", cluster=cluster)
    assert ok(deleted).strip() == "user uma deleted" and "is being deleted; left:" in deleted.stderr
    assert cluster.call("GET", f"/api/v1/vms/{vm['uuid']}")[0] == 404
    assert "uma" not in {u["name"] for u in as_json(ucloud(home, "user", "list", "-o", "json", cluster=cluster))}


def test_the_upload_progress_bar_is_shown_on_a_terminal_only(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.raw"
    data.write_bytes(os.urandom(2 * 1024 * 1024))
    plain = ucloud(home, "file", "upload", str(data), cluster=cluster)
    assert ok(plain) and plain.stderr == ""
    controller, terminal = pty.openpty()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}, "HOME": str(home),
           "UCLOUD_API_URL": f"http://127.0.0.1:{cluster.api_port}", "UCLOUD_TOKEN": cluster.token}
    shown = subprocess.run([str(BIN / "ucloud"), "file", "upload", str(data), "--name", "again.raw"], env=env,
                           stdout=subprocess.PIPE, stderr=terminal, timeout=120)
    os.close(terminal)
    bar = os.read(controller, 65536).decode(errors="replace")
    os.close(controller)
    assert shown.returncode == 0 and "uploading data.raw" in bar and "100%" in bar, bar


def test_images_are_named_and_names_complete(cluster: Cluster, home: Path) -> None:
    from ucloud_common.image import IMAGES, Image, ImageStatus

    cluster.store.create(IMAGES, "b0b0b0b0-0000-4000-8000-000000000001", Image(
        uuid="b0b0b0b0-0000-4000-8000-000000000001", owner="admin", name="nowhere", store_name="local",
        public=True, status=ImageStatus.CREATED))
    # By name: the VM gets the image's uuid (which no host has: so it waits to be placed, the scheduler
    # saying why, which the wait's timeout tells; the reason is written within a cycle or two).
    failed = ucloud(home, "vm", "create", "named", "--ram", "0.25", "--ssd", "1", "--image", "nowhere", "--wait",
                    "--timeout", "10", cluster=cluster)
    assert "no host holds image b0b0b0b0-0000-4000-8000-000000000001" in failed.stderr
    assert "image 'nowhere' does not exist" not in failed.stderr
    env = {"COMP_WORDS": "ucloud vm show na", "COMP_CWORD": "3", "_UCLOUD_COMPLETE": "bash_complete"}
    completed = subprocess.run([str(BIN / "ucloud")], env={**os.environ, **env, "UCLOUD_TOKEN": cluster.token,
                               "UCLOUD_API_URL": f"http://127.0.0.1:{cluster.api_port}"},
                               capture_output=True, text=True, timeout=60)
    assert completed.stdout.split() == ["plain,named"], completed.stdout
    assert "_UCLOUD_COMPLETE=bash_complete" in ok(ucloud(home, "completion", "bash"))
    assert "deleted" in ok(ucloud(home, "vm", "delete", "named", "--wait", cluster=cluster))
    assert "image nowhere (b0b0b0b0-0000-4000-8000-000000000001) deleted" in ok(
        ucloud(home, "image", "delete", "nowhere", cluster=cluster))


def test_admin_hosts_and_users(cluster: Cluster, home: Path) -> None:
    hosts = as_json(ucloud(home, "host", "list", "-o", "json", cluster=cluster))
    assert {h["name"] for h in hosts} >= {"h1"} and all(h["alive"] for h in hosts if h["name"] == "h1")
    assert "MAINTENANCE" in ok(ucloud(home, "host", "list", cluster=cluster))
    assert as_json(ucloud(home, "host", "maintenance", "h1", "on", "-o", "json", cluster=cluster))["maintenance"]
    assert not as_json(ucloud(home, "host", "maintenance", "h1", "off", "-o", "json", cluster=cluster))["maintenance"]
    created = as_json(ucloud(home, "user", "create", "carol", "-o", "json", cluster=cluster))
    assert "token (shown only now)" in ok(ucloud(home, "user", "create", "dave", cluster=cluster))
    assert {"admin", "carol", "dave"} <= {u["name"] for u in as_json(ucloud(home, "user", "list", "-o", "json",
                                                                             cluster=cluster))}
    carol = ucloud(home, "host", "list", cluster=cluster, token=created["token"])
    assert "this needs an admin" in one_error_line(carol, 1)
    ok(ucloud(home, "user", "delete", "carol", cluster=cluster))
    ok(ucloud(home, "user", "delete", "dave", cluster=cluster))


def test_quotas_shown_set_and_refused(cluster: Cluster, home: Path) -> None:
    hana = as_json(ucloud(home, "user", "create", "hana", "-o", "json", cluster=cluster))
    shown = ok(ucloud(home, "quota", cluster=cluster, token=hana["token"]))
    assert shown.splitlines()[0].split() == ["RESOURCE", "USED/LIMIT", "UNIT", "SET", "BY", "WHAT"]
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[1:]}
    assert rows["vms"] == ["0/100", "VMs", "default", "VMs"] and rows["upload_bytes"][:3] == ["0/1024", "GiB", "default"]
    set_ = ok(ucloud(home, "quota", "set", "hana", "--vms", "0", "--upload-gib", "1.5", "--default", "cpu",
                     cluster=cluster))
    assert "0/0" in set_ and "0/1.5" in set_ and "admin" in set_
    quota = as_json(ucloud(home, "quota", "--user", "hana", "-o", "json", cluster=cluster))
    assert (quota["vms"]["limit"], quota["upload_bytes"]["limit"], quota["cpu"]["set"]) == (0, 1.5 * 2**30, False)
    refused = ucloud(home, "vm", "create", "web", "--image", "tiny", cluster=cluster, token=hana["token"])
    assert "quota vms (VMs) of user hana exceeded: 0 VMs used of 0 VMs" in one_error_line(refused, 1)
    assert "needs an admin" in one_error_line(
        ucloud(home, "quota", "set", "hana", "--vms", "9", cluster=cluster, token=hana["token"]), 1)
    assert "name at least one resource" in ucloud(home, "quota", "set", "hana", cluster=cluster).stderr
    assert "0/0" in ok(ucloud(home, "quota", "recount", "hana", cluster=cluster))
    ok(ucloud(home, "user", "delete", "hana", cluster=cluster))


def test_passwords_and_own_tokens(cluster: Cluster, home: Path) -> None:
    frank = as_json(ucloud(home, "user", "create", "frank", "--password-stdin", "-o", "json", cluster=cluster,
                           stdin="first password\n"))
    ok(ucloud(home, "user", "create", "gina", cluster=cluster))
    assert "set" in ok(ucloud(home, "user", "passwd", "frank", "--password-stdin", cluster=cluster,
                              token=frank["token"], stdin="second password\nfirst password\n"))
    assert "only your own" in one_error_line(ucloud(home, "user", "passwd", "gina", "--password-stdin",
                                                    cluster=cluster, token=frank["token"],
                                                    stdin="frank owns gina\n\n"), 1)
    url = f"http://127.0.0.1:{cluster.api_port}"
    assert "logged in" in ok(ucloud(home, "login", "--url", url, "--user", "frank", "--password-stdin",
                                    stdin="second password\n"))
    assert "login" in {t["name"] for t in as_json(ucloud(home, "token", "list", "-o", "json"))}
    assert "wrong name or password" in one_error_line(ucloud(home, "login", "--url", url, "--user", "frank",
                                                             "--password-stdin", stdin="first password\n"), 1)
    made = as_json(ucloud(home, "token", "create", "laptop", "--expires-in", "3600", "-o", "json",
                          cluster=cluster, token=frank["token"]))
    assert made["expires_at"] and made["token"] not in ok(ucloud(home, "token", "list", cluster=cluster,
                                                                 token=frank["token"]))
    listed = as_json(ucloud(home, "token", "list", "-o", "json", cluster=cluster, token=made["token"]))
    assert {t["name"] for t in listed} == {"initial", "login", "laptop"}
    gina_tokens = as_json(ucloud(home, "token", "list", "--user", "gina", "-o", "json", cluster=cluster))
    assert "does not exist" in one_error_line(ucloud(home, "token", "revoke", gina_tokens[0]["id"],
                                                     cluster=cluster, token=made["token"]), 1)
    assert "revoked" in ok(ucloud(home, "token", "revoke", made["id"], cluster=cluster, token=frank["token"]))
    # Refused at once by the worker that revoked it, by every other worker once its watch delivers it.
    for _ in range(10):  # (each call may meet another worker)
        assert "not valid" in one_error_line(ucloud(home, "vm", "list", cluster=cluster, token=made["token"]), 1)
    ok(ucloud(home, "user", "delete", "frank", cluster=cluster))
    ok(ucloud(home, "user", "delete", "gina", cluster=cluster))


def test_errors_are_one_line(cluster: Cluster, home: Path) -> None:
    assert "the token is not valid" in one_error_line(ucloud(home, "vm", "list", cluster=cluster, token="x.y"), 1)
    assert "does not exist" in one_error_line(
        ucloud(home, "vm", "show", "00000000-0000-4000-8000-000000000000", cluster=cluster), 1)
    down = ucloud(home, "vm", "list", cluster=cluster, url=f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the API" in one_error_line(down, 3)
    invalid = ucloud(home, "vm", "create", "x/y", "--image", "tiny", cluster=cluster)
    assert "name" in one_error_line(invalid, 1)
    usage = ucloud(home, "vm", "create", cluster=cluster)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_every_command_has_help_with_an_example(home: Path) -> None:
    commands = [["login"], *[["vm", c] for c in ("create", "list", "show", "events", "start", "shutdown", "reboot",
                                                 "suspend", "resume", "migrate", "delete")],
                *[["network", c] for c in ("create", "list", "show", "delete", "attach", "detach")],
                *[["image", c] for c in ("list", "create", "delete")], ["file", "list"],
                *[["ssh-key", c] for c in ("add", "list", "delete")], ["host", "list"], ["host", "maintenance"],
                *[["user", c] for c in ("create", "list", "delete", "passwd")], ["quota"],
                *[["quota", c] for c in ("set", "recount")],
                *[["token", c] for c in ("create", "list", "revoke")]]
    for command in commands:
        helped = ucloud(home, *command, "--help")
        assert helped.returncode == 0 and "Example: ucloud" in helped.stdout, command
