"""The cloud-init seed: the files a VM record gives (exactly), what an untrusted record cannot put in
them, and the drive read back with mtools."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
from pathlib import Path

import pytest

from ucloud_common.errors import PermanentError
from ucloud_common.vm import NIC, VM
from ucloud_common.cidata import MAX_USER_DATA, SeedError, SeedTooLarge, hostname_for, seed_files
from ucloud_vm.cidata import build_seed, drive_options

NET_A, NET_B = "7a1c0f3e-net-a", "9b2d1e4f-net-b"
NICS = (NIC(network=NET_A, mac="02:00:00:00:00:0A"), NIC(network=NET_B, mac="02:00:00:00:00:0b"))


def a_key(kind: str, filler: int, comment: str = "", size: int = 32) -> str:
    """A well-formed OpenSSH public key line: the blob starts with its type, as the check requires."""
    name = kind.encode()
    blob = len(name).to_bytes(4, "big") + name + size.to_bytes(4, "big") + bytes([filler]) * size
    return " ".join(filter(None, [kind, base64.b64encode(blob).decode(), comment]))


LAPTOP, PHONE = a_key("ssh-ed25519", 1, "alice@laptop"), a_key("ssh-rsa", 2, "alice@phone", size=256)


def a_vm(**fields: object) -> VM:
    return VM.model_validate({"uuid": "0b6e2a5c-u1", "owner": "alice", "name": "web_1",
                              "specs": {"cpu": 1, "ram": 0.5, "ssd": 1}, "image": "img", **fields})


def parsed(files: dict[str, bytes]) -> dict[str, object]:
    assert files["user-data"].startswith(b"#cloud-config\n")
    return {name: json.loads(data.removeprefix(b"#cloud-config\n")) for name, data in files.items()}


def test_the_seed_of_a_vm_with_two_nics_and_two_keys() -> None:
    files = parsed(seed_files(a_vm(ssh_keys=(LAPTOP, PHONE), networks=NICS), "web-1", NICS))
    instance_id = files["meta-data"].pop("instance-id")  # type: ignore[attr-defined]
    assert re.fullmatch(r"0b6e2a5c-u1-[0-9a-f]{16}", instance_id)
    assert files == {
        "meta-data": {"local-hostname": "web-1"},
        "user-data": {"hostname": "web-1", "disable_root": False, "ssh_authorized_keys": [LAPTOP, PHONE]},
        "network-config": {"version": 1, "config": [
            {"type": "physical", "name": "eth0", "mac_address": "02:00:00:00:00:0a", "accept-ra": True,
             "subnets": [{"type": "ipv6_slaac"}]},
            {"type": "physical", "name": "eth1", "mac_address": "02:00:00:00:00:0b", "accept-ra": True,
             "subnets": [{"type": "ipv6_slaac"}]}]},
    }


def test_cloud_init_reads_the_files_as_yaml() -> None:
    """cloud-init parses all three with a YAML loader: JSON must come out of it unchanged."""
    yaml = pytest.importorskip("yaml")
    vm = a_vm(ssh_keys=(a_key("ssh-ed25519", 3, "zoë's 🔑"),), networks=NICS)
    files = seed_files(vm, "web-1", NICS)
    assert {name: yaml.safe_load(data) for name, data in files.items()} == parsed(files)


def test_the_instance_id_stays_across_boots_and_changes_with_a_key_or_a_nic() -> None:
    """cloud-init reads a NoCloud seed again, and installs keys, only for a new instance-id."""
    first = seed_files(a_vm(ssh_keys=(LAPTOP,)), "web-1", NICS)
    assert seed_files(a_vm(ssh_keys=(LAPTOP,), status="RUNNING", generation=7), "web-1", NICS) == first
    ids = {json.loads(seed_files(a_vm(ssh_keys=keys), "web-1", nics)["meta-data"])["instance-id"]
           for keys, nics in [((LAPTOP,), NICS), ((LAPTOP, PHONE), NICS), ((LAPTOP,), NICS[:1])]}
    assert len(ids) == 3 and all(i.startswith("0b6e2a5c-u1-") for i in ids)


@pytest.mark.parametrize(("name", "hostname"), [
    ("web", "web"), ("Web_1", "web-1"), ("db@eu:2", "db-eu-2"), ("a.b-.c", "a.b.c"), ("x.-", "x")])
def test_a_vm_name_becomes_a_host_name(name: str, hostname: str) -> None:
    assert hostname_for(name) == hostname


def test_a_bad_key_in_the_record_is_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    injected = LAPTOP + "\nruncmd: [reboot]"  # a second line would be a second YAML key, were it not JSON
    keys = ("not a key", injected, PHONE, f"  {LAPTOP}  ")
    with caplog.at_level(logging.WARNING, logger="ucloud_vm.cidata"):
        files = seed_files(a_vm(ssh_keys=keys), "web-1", ())
    assert parsed(files)["user-data"]["ssh_authorized_keys"] == [PHONE, LAPTOP]  # type: ignore[index]
    assert [r.getMessage() for r in caplog.records] == [
        "VM 0b6e2a5c-u1: SSH key 1 of 4 left out of the cloud-init drive: not an OpenSSH public key "
        "(expected one of: ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, "
        "sk-ecdsa-sha2-nistp256@openssh.com, sk-ssh-ed25519@openssh.com, ssh-ed25519, ssh-rsa)",
        "VM 0b6e2a5c-u1: SSH key 2 of 4 left out of the cloud-init drive: the key's comment has control characters"]


@pytest.mark.parametrize(("hostname", "nics", "says"), [
    ("web_1", NICS, "'web_1' is not a valid host name"),
    ("-web", NICS, "'-web' is not a valid host name"),
    ("web-1", (NIC(network=NET_A, mac="02:00:00:00:00"),), f"on network {NET_A} has MAC '02:00:00:00:00'"),
    ("web-1", (NIC(network=NET_A, mac="02:00:00:00:00:0a\n"),), "which is not six hex bytes"),
    ("web-1", (NICS[0], NIC(network=NET_B, mac="02:00:00:00:00:0A")),
     f"MAC 02:00:00:00:00:0a is on two NICs (networks {NET_A} and {NET_B})"),
])
def test_a_record_the_seed_cannot_be_made_from_is_refused(hostname: str, nics: tuple[NIC, ...], says: str) -> None:
    with pytest.raises(SeedError, match="cannot build the cloud-init drive") as refused:
        seed_files(a_vm(ssh_keys=(LAPTOP,)), hostname, nics)
    assert says in refused.value.reason and isinstance(refused.value, PermanentError)


def test_too_large_user_data_is_refused_naming_the_limit() -> None:
    big = tuple(a_key("ssh-rsa", n, size=4096) for n in range(12))  # ≈ 5.5 KiB each, ≈ 66 KiB in all
    with pytest.raises(SeedTooLarge, match=r"over the limit of 65,536 bytes \(64 KiB\); remove some of the VM's SSH"):
        seed_files(a_vm(ssh_keys=big), "web-1", NICS)
    fits = seed_files(a_vm(ssh_keys=big[:11]), "web-1", NICS)
    assert len(fits["user-data"]) <= MAX_USER_DATA


def mtools(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_the_drive_reads_back_with_its_label_and_files(tmp_path: Path) -> None:
    files = seed_files(a_vm(ssh_keys=(LAPTOP, PHONE)), "web-1", NICS)
    drive = tmp_path / "cidata.img"
    build_seed(drive, files)
    assert "Volume label is CIDATA" in mtools("mlabel", "-s", "-i", str(drive), "::")
    listing = mtools("mdir", "-b", "-i", str(drive), "::/")
    assert sorted(listing.split()) == ["::/meta-data", "::/network-config", "::/user-data"]
    for name, data in files.items():
        assert mtools("mtype", "-i", str(drive), f"::/{name}").encode() == data
    assert drive.stat().st_size <= 2 * 1024 * 1024
    assert [p.name for p in tmp_path.iterdir()] == ["cidata.img"]  # no scratch left beside it


def test_a_rebuild_is_identical_and_a_new_key_list_replaces_the_drive(tmp_path: Path) -> None:
    drive = tmp_path / "cidata.img"
    build_seed(drive, seed_files(a_vm(ssh_keys=(LAPTOP,)), "web-1", NICS))
    first = drive.read_bytes()
    build_seed(drive, seed_files(a_vm(ssh_keys=(LAPTOP,)), "web-1", NICS))
    assert drive.read_bytes() == first
    build_seed(drive, seed_files(a_vm(ssh_keys=(LAPTOP, PHONE)), "web-1", NICS))
    user_data = mtools("mtype", "-i", str(drive), "::/user-data")
    assert json.loads(user_data.removeprefix("#cloud-config\n"))["ssh_authorized_keys"] == [LAPTOP, PHONE]


@pytest.mark.parametrize(("mcopy", "says"), [
    ("#!/bin/sh\necho 'mcopy: Disk full' >&2\nexit 1\n", "mcopy failed: mcopy: Disk full"),
    (None, "mcopy is not installed on this host (Debian packages dosfstools and mtools)"),
])
def test_a_failed_build_leaves_the_old_drive_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              mcopy: str | None, says: str) -> None:
    runs = tmp_path / "vm"
    runs.mkdir()
    drive = runs / "cidata.img"
    build_seed(drive, seed_files(a_vm(ssh_keys=(LAPTOP,)), "web-1", NICS))
    old = drive.read_bytes()
    tools = tmp_path / "bin"  # the real mkfs.vfat, and an mcopy that fails or is missing
    tools.mkdir()
    (tools / "mkfs.vfat").symlink_to("/usr/sbin/mkfs.vfat")
    if mcopy:
        (tools / "mcopy").write_text(mcopy)
        (tools / "mcopy").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(SeedError, match="cannot build the cloud-init drive") as refused:
        build_seed(drive, seed_files(a_vm(ssh_keys=(LAPTOP, PHONE)), "web-1", NICS))
    assert says in refused.value.reason
    assert drive.read_bytes() == old and [p.name for p in runs.iterdir()] == ["cidata.img"]


def test_the_qemu_drive_options() -> None:
    assert drive_options(Path("/run/ucloud/vms/u1/cidata.img")) == [
        "file=/run/ucloud/vms/u1/cidata.img", "format=raw", "if=virtio", "readonly=on", "id=cidata"]
    assert drive_options(Path("/srv/a,b/cidata.img"))[0] == "file=/srv/a,,b/cidata.img"
