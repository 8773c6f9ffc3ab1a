"""The install for real hosts (`deploy/install.sh --system`), done for real on this machine into a
prefix of its own: the `ucloud` user, the locked environment without the dev packages, the config
only group ucloud may read (kept by a second run), and units that `systemd-analyze verify` accepts
(no systemd runs here: the check is offline). And the API, as its unit starts it, listens on IPv6
and IPv4. (It changes this machine: a user and groups ucloud and ucloud-ceph; CI machines are fresh.)"""

from __future__ import annotations

import grp
import pwd
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.etcd import free_port
from tests.helpers.processes import BIN

REPO = Path(__file__).resolve().parents[2]
# Not under pytest's (root-only) temporary directory: user ucloud must reach the installed files.
ROOT = Path("/var/tmp/ucloud-system-install-test")


def test_the_system_install_gives_units_systemd_accepts_and_a_config_only_ucloud_reads() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "opt").mkdir(parents=True)
    for path in (ROOT, ROOT / "opt"):
        path.chmod(0o755)  # as /opt is
    prefix, etc, units = ROOT / "opt" / "ucloud", ROOT / "etc" / "ucloud", ROOT / "units"
    install = ["bash", str(REPO / "deploy" / "install.sh"), "--system", "--prefix", str(prefix), "--etc", str(etc),
               "--units", str(units), "--state", str(ROOT / "state")]
    try:
        done = subprocess.run(install, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "systemctl enable --now ucloud-api.service" in done.stdout

        conf = etc / "ucloud.conf"
        mode = conf.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o640 and mode.st_uid == 0
        assert grp.getgrgid(mode.st_gid).gr_name == "ucloud"
        assert "UCLOUD_ETCD_ENDPOINTS=" in conf.read_text()
        assert f"UCLOUD_IMAGE_DIR={ROOT}/state/images" in conf.read_text()
        assert (ROOT / "state" / "images").stat().st_uid == pwd.getpwnam("ucloud").pw_uid
        # Users' upload folders: the API (ucloud) makes and writes them, file-scan (ucloud) reads them.
        uploads = (ROOT / "state" / "uploads").stat()
        assert f"UCLOUD_UPLOAD_DIR={ROOT}/state/uploads" in conf.read_text()
        assert uploads.st_uid == pwd.getpwnam("ucloud").pw_uid and stat.S_IMODE(uploads.st_mode) == 0o750
        # The ucloud user reads the config and runs the installed code; the dev packages are not there.
        shown = subprocess.run(["runuser", "-u", "ucloud", "--", str(prefix / ".venv" / "bin" / "ucloud-api"),
                                "--config", str(conf), "config"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "UCLOUD_ETCD_ENDPOINTS=" in shown.stdout, shown.stderr
        assert not list((prefix / ".venv").glob("lib/python3*/site-packages/pytest"))
        assert (prefix / "ucloud_api" / "site" / "vendor" / "novnc").is_dir()

        text = (units / "ucloud-api.service").read_text()
        assert f"ExecStart={prefix}/.venv/bin/ucloud-api serve --bind [::]:8080" in text
        assert f"UCLOUD_CONFIG={conf}" in text and "=/opt/ucloud" not in text and " /opt/ucloud" not in text
        assert f"ReadWritePaths={ROOT}/state/uploads" in text
        for hardened in ("ucloud-api", "ucloud-scheduler", "ucloud-filescan", "ucloud-imagescanner"):
            text = (units / f"{hardened}.service").read_text()
            assert "User=ucloud" in text and "ProtectSystem=strict" in text and "CapabilityBoundingSet=\n" in text
            assert ("SupplementaryGroups=ucloud-ceph" in text) == (hardened in ("ucloud-scheduler", "ucloud-imagescanner"))
        for template in ("ucloud-vm", "ucloud-console-proxy"):
            (units / f"{template}@h1.service").symlink_to(units / f"{template}@.service")
        checked = sorted(str(p) for p in units.iterdir() if "@." not in p.name)
        verified = subprocess.run(["systemd-analyze", "verify", "--man=no", *checked], capture_output=True,
                                  text=True, timeout=120)
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr

        # Again, as an upgrade would: the operator's config stays as it is.
        conf.write_text(conf.read_text() + "UCLOUD_API_URL=http://example.org:8080\n")
        again = subprocess.run(install, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr
        assert "UCLOUD_API_URL=http://example.org:8080" in conf.read_text()
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


def test_the_api_as_its_unit_starts_it_listens_on_ipv6_and_ipv4(tmp_path: Path) -> None:
    bind = "[::]:8080"
    assert f"serve --bind {bind} " in (REPO / "deploy" / "systemd" / "ucloud-api.service").read_text()
    port = free_port()
    conf = tmp_path / "ucloud.conf"
    conf.write_text(f"UCLOUD_ETCD_ENDPOINTS=127.0.0.1:{free_port()}\nUCLOUD_ETCD_TIMEOUT=1\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}, "UCLOUD_CONFIG": str(conf)}
    api = subprocess.Popen([str(BIN / "ucloud-api"), "serve", "--bind", bind.replace("8080", str(port)),
                            "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for host in ("127.0.0.1", "[::1]"):
            deadline = time.monotonic() + 30
            while True:
                try:  # etcd is not there: the API says so, over either family
                    urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5)
                except urllib.error.HTTPError as answer:
                    assert answer.code == 503 and json.load(answer)["status"] == "unavailable"
                    break
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    if time.monotonic() > deadline:
                        pytest.fail(f"the API did not answer on {host}")
                    time.sleep(0.2)
    finally:
        api.terminate()
        api.wait(timeout=15)
