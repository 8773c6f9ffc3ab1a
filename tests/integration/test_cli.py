"""Every daemon's shared commands, run as the installed entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.etcd import EtcdServer

BIN = Path(sys.executable).parent
DAEMONS = ["ucloud-api", "ucloud-scheduler", "ucloud-vm", "ucloud-filescan", "ucloud-imagescanner"]


EMPTY_CONFIG: Path


@pytest.fixture(autouse=True, scope="module")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    global EMPTY_CONFIG
    EMPTY_CONFIG = tmp_path_factory.mktemp("conf") / "empty.conf"
    EMPTY_CONFIG.write_text("")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run an entry point with no UCLOUD_* from the caller and an empty config file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    return subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True,
                          env={**clean, "UCLOUD_CONFIG": str(EMPTY_CONFIG), **env}, timeout=60)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_help_and_check_against_a_real_etcd(daemon: str, etcd_server: EtcdServer) -> None:
    helped = run([daemon, "--help"])
    assert helped.returncode == 0 and "check" in helped.stdout and "config" in helped.stdout
    checked = run([daemon, "check"], UCLOUD_ETCD_ENDPOINTS=etcd_server.endpoint)
    assert checked.returncode == 0, checked.stderr
    assert f"etcd at {etcd_server.endpoint} answers" in checked.stdout


def test_check_says_clearly_when_etcd_is_down() -> None:
    result = run(["ucloud-scheduler", "check"], UCLOUD_ETCD_ENDPOINTS="127.0.0.1:9", UCLOUD_ETCD_TIMEOUT="1")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: etcd at 127.0.0.1:9 is unavailable")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_bad_configuration_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = run(["ucloud-vm", "config"], UCLOUD_HEARTBEAT_INTERVAL="9")
    assert result.returncode == 2
    assert "three heartbeats must fit in one TTL" in result.stderr and "Traceback" not in result.stderr
    missing = run(["ucloud-vm", "--config", str(tmp_path / "nope.conf"), "config"])
    assert missing.returncode == 1 and "nope.conf does not exist" in missing.stderr


def test_config_output_is_a_valid_config_file(tmp_path: Path) -> None:
    shown = run(["ucloud-api", "config"], UCLOUD_ETCD_ENDPOINTS="10.1.1.1:2379,10.1.1.2:2379",
                UCLOUD_ETCD_USER="root", UCLOUD_ETCD_PASSWORD="s3cret", UCLOUD_IMAGE_SECRET="i" * 32,
                UCLOUD_GUACAMOLE_SECRET_KEY="ab" * 16)
    assert shown.returncode == 0
    assert "s3cret" not in shown.stdout and "UCLOUD_ETCD_PASSWORD=********" in shown.stdout
    assert "i" * 32 not in shown.stdout and "UCLOUD_IMAGE_SECRET=********" in shown.stdout
    assert "ab" * 16 not in shown.stdout and "UCLOUD_GUACAMOLE_SECRET_KEY=********" in shown.stdout
    conf = tmp_path / "ucloud.conf"
    conf.write_text(shown.stdout.replace("UCLOUD_ETCD_PASSWORD=********", "UCLOUD_ETCD_PASSWORD=s3cret")
                    .replace("UCLOUD_IMAGE_SECRET=********", "UCLOUD_IMAGE_SECRET=" + "i" * 32)
                    .replace("UCLOUD_GUACAMOLE_SECRET_KEY=********", "UCLOUD_GUACAMOLE_SECRET_KEY=" + "ab" * 16))
    again = run(["ucloud-api", "--config", str(conf), "config"])
    assert again.returncode == 0 and again.stdout == shown.stdout


def test_an_agent_offering_hdd_without_a_place_for_hdd_disks_refuses_to_start(tmp_path: Path) -> None:
    """Else the scheduler would count HDD that no VM can be given: each would end in ERROR."""
    result = run(["ucloud-vm", "run", "--hostname", "h9", "--hdd", "10"], UCLOUD_ACCEL="tcg",
                 UCLOUD_DISK_DIR=str(tmp_path / "disks"), UCLOUD_RUN_DIR=str(tmp_path / "run"),
                 UCLOUD_ETCD_ENDPOINTS="127.0.0.1:9", UCLOUD_ETCD_TIMEOUT="1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == ("Error: --hdd 10 offers HDD, but no storage here can make HDD disks: set UCLOUD_HDD_DIR "
                             "(local) or UCLOUD_CEPH_HDD_POOL (rbd)\n")
