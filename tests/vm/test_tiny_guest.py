"""The tiny test guest is reachable: booted in real QEMU (TCG) on a tap in a network namespace of
its own, it takes an IPv6 address by SLAAC from radvd on the namespace's bridge, installs the keys of
its NoCloud (cidata) drive and lets the holder of such a key, and no one else, in over SSH.

Namespace layout (nothing outside it is touched; it is deleted afterwards):

    netns tiny-<pid>:  br0 (fd00:7e57::1/64, radvd announces fd00:7e57::/64)
                         └── tap0  ←  QEMU (run with `ip netns exec`)  →  guest eth0, SLAAC
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tiny import BOOTED, SCRIPT, tiny_image

PREFIX = "fd00:7e57:"
MAC = "52:54:00:7e:57:01"
GUEST = f"{PREFIX}:5054:ff:fe7e:5701"  # EUI-64 of MAC in the announced /64
LINK_LOCAL = "fe80::5054:ff:fe7e:5701"
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]

pytestmark = pytest.mark.skipif(not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "radvd", "ssh",
                                                                        "mkfs.vfat", "mcopy", "ip")),
                                reason="needs qemu, radvd, openssh-client, dosfstools, mtools, iproute2")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def key_parser() -> str:
    """The awk program /init uses on user-data, as the build script writes it."""
    lines = SCRIPT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("<<'AWK'"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "AWK")
    return "\n".join(lines[start + 1:end]) + "\n"


@pytest.mark.parametrize("user_data", [
    '#cloud-config\n{"hostname": "web", "ssh_authorized_keys": ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"]}\n',
    '#cloud-config\n{\n  "ssh_authorized_keys": [\n    "ssh-ed25519 AAAA one",\n    "ssh-rsa BBBB two"\n  ]\n}\n',
    "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAA one\n\n  - \"ssh-rsa BBBB two\"\nusers: []\n",
    "#cloud-config\nssh_authorized_keys: ['ssh-ed25519 AAAA one', \"ssh-rsa BBBB two\"]\n",
])
def test_the_key_parser_reads_json_and_yaml_lists(tmp_path: Path, user_data: str) -> None:
    (tmp_path / "keys.awk").write_text(key_parser())
    (tmp_path / "user-data").write_text(user_data)
    keys = run("busybox", "awk", "-f", str(tmp_path / "keys.awk"), str(tmp_path / "user-data")).stdout
    assert keys.splitlines() == ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"]


def test_the_key_parser_finds_no_keys_where_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "keys.awk").write_text(key_parser())
    for n, user_data in enumerate(["#cloud-config\nhostname: web\n", "#cloud-config\nssh_authorized_keys: []\n"]):
        (tmp_path / f"u{n}").write_text(user_data)
        assert run("busybox", "awk", "-f", str(tmp_path / "keys.awk"), str(tmp_path / f"u{n}")).stdout == ""


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A namespace with br0 announcing fd00:7e57::/64 and tap0 enslaved to it."""
    name = f"tiny-{os.getpid()}"
    run("ip", "netns", "add", name)
    radvd: subprocess.Popen[bytes] | None = None
    try:
        for command in ("ip link set lo up", "ip link add br0 type bridge", "ip link set br0 up",
                        f"ip addr add {PREFIX}:1/64 dev br0 nodad", "ip tuntap add tap0 mode tap",
                        "ip link set tap0 master br0 up", "sysctl -qw net.ipv6.conf.all.forwarding=1"):
            run("ip", "netns", "exec", name, *command.split())
        (tmp_path / "radvd.conf").write_text(
            "interface br0 { AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 10;\n"
            f"  prefix {PREFIX}:/64 {{ AdvOnLink on; AdvAutonomous on; }}; }};\n")
        radvd = subprocess.Popen(["ip", "netns", "exec", name, "radvd", "-n", "-m", "stderr", "-C",
                                  str(tmp_path / "radvd.conf"), "-p", str(tmp_path / "radvd.pid")],
                                 stdout=subprocess.DEVNULL, stderr=(tmp_path / "radvd.log").open("wb"))
        yield name
    finally:
        if radvd is not None:
            radvd.terminate()
            radvd.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False)


def seed(directory: Path, public_key: str, hostname: str) -> Path:
    """A NoCloud seed as ucloud writes it: JSON user-data (which is YAML) after #cloud-config."""
    (directory / "meta-data").write_text(f"instance-id: i-tiny\nlocal-hostname: {hostname}\n")
    (directory / "user-data").write_text("#cloud-config\n" + json.dumps(
        {"hostname": hostname, "ssh_authorized_keys": [public_key]}) + "\n")
    image = directory / "seed.img"
    run("truncate", "-s", "2M", str(image))
    run("mkfs.vfat", "-n", "CIDATA", str(image))
    run("mcopy", "-i", str(image), str(directory / "meta-data"), str(directory / "user-data"), "::/")
    return image


def new_key(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


def ssh(netns: str, address: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, "ssh", "-6", *SSH_OPTIONS, *options, f"root@{address}",
                           command], check=False, capture_output=True, text=True, timeout=60)


def qmp(path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        replies = client.makefile("rw")
        replies.readline()  # greeting
        for execute in ("qmp_capabilities", command):
            replies.write(json.dumps({"execute": execute}) + "\n")
            replies.flush()
            while "return" not in (reply := json.loads(replies.readline())):
                assert "error" not in reply, reply


def test_the_tiny_guest_takes_its_keys_and_lets_their_owner_in_over_ssh(tmp_path: Path, netns: str) -> None:
    tiny = tiny_image()
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(tiny / "tiny.qcow2"), "-F", "qcow2",
        str(tmp_path / "disk.qcow2"))
    key, wrong = new_key(tmp_path / "key"), new_key(tmp_path / "wrong")
    drive = seed(tmp_path, (tmp_path / "key.pub").read_text().strip(), "tiny-web")
    serial = tmp_path / "serial.log"
    started = time.monotonic()
    guest = subprocess.Popen(
        ["ip", "netns", "exec", netns, "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults",
         "-display", "none", "-serial", f"file:{serial}",
         "-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off",
         "-drive", f"file={tmp_path / 'disk.qcow2'},format=qcow2,if=virtio",
         "-drive", f"file={drive},format=raw,if=virtio,readonly=on",
         "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
         "-device", f"virtio-net-pci,netdev=net0,mac={MAC}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        login = None
        while time.monotonic() - started < 120:
            assert guest.poll() is None, guest.stderr.read() if guest.stderr else ""
            if f"ucloud-tiny: eth0 {GUEST}" in (serial.read_text() if serial.exists() else ""):
                login = ssh(netns, GUEST, "echo ok; hostname", "-i", str(key))
                if login.returncode == 0:
                    break
            time.sleep(0.5)
        boot_to_ssh = time.monotonic() - started
        console = serial.read_text()
        assert login is not None and login.returncode == 0, (login, console)
        assert login.stdout.split() == ["ok", "tiny-web"]
        print(f"\nboot to ssh under TCG: {boot_to_ssh:.1f} s")
        for line in (BOOTED, "ucloud-tiny: cidata 1 keys, hostname tiny-web", f"ucloud-tiny: eth0 up {MAC}",
                     f"ucloud-tiny: eth0 {LINK_LOCAL}", f"ucloud-tiny: eth0 {GUEST}"):
            assert line in console.splitlines(), console
        assert "/init:" not in console, console  # no step of the guest's init failed
        # The link-local address works as well (no router needed), and the shell has busybox's tools.
        shell = ssh(netns, f"{LINK_LOCAL}%br0", "cat /root/.ssh/authorized_keys; ip -6 -o addr show dev eth0",
                    "-i", str(key))
        assert shell.returncode == 0 and shell.stdout.startswith("ssh-ed25519 ") and GUEST in shell.stdout
        refused = ssh(netns, GUEST, "echo in", "-i", str(wrong))
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
        no_key = ssh(netns, GUEST, "echo in", "-o", "PubkeyAuthentication=no")  # passwords are off
        assert no_key.returncode == 255 and "in" not in no_key.stdout.split()
        # ACPI power-off still works with the new /init.
        qmp(tmp_path / "qmp.sock", "system_powerdown")
        assert guest.wait(timeout=60) == 0
        assert "ucloud-tiny: power button, powering off" in serial.read_text()
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait()
