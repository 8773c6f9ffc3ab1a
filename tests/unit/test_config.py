from pathlib import Path

import pytest
from pydantic import ValidationError

from ucloud_common.config import EtcdEndpoint, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for name in list(os.environ):
        if name.startswith("UCLOUD_"):
            monkeypatch.delenv(name)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ucloud_common.config.DEFAULT_CONFIG_FILE", tmp_path / "absent.conf")
    settings = load_settings()
    assert settings.etcd_endpoints == [EtcdEndpoint(host="127.0.0.1", port=2379)]


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "ucloud.conf"
    conf.write_text("UCLOUD_ETCD_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379,[fd00::3]:2379\nUCLOUD_LOG_LEVEL=DEBUG\n")
    settings = load_settings(conf)
    assert [str(ep) for ep in settings.etcd_endpoints] == ["10.0.0.1:2379", "10.0.0.2:2379", "[fd00::3]:2379"]
    assert settings.log_level == "DEBUG"
    monkeypatch.setenv("UCLOUD_ETCD_ENDPOINTS", "etcd.example:12379")
    assert [str(ep) for ep in load_settings(conf).etcd_endpoints] == ["etcd.example:12379"]


def test_ucloud_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "other.conf"
    conf.write_text("UCLOUD_RESYNC_INTERVAL=5\n")
    monkeypatch.setenv("UCLOUD_CONFIG", str(conf))
    assert load_settings().resync_interval == 5
    monkeypatch.setenv("UCLOUD_CONFIG", str(tmp_path / "missing.conf"))
    with pytest.raises(FileNotFoundError, match="missing.conf"):
        load_settings()


@pytest.mark.parametrize("overrides, message", [
    ({"heartbeat_interval": 5, "host_lease_ttl": 10}, "three heartbeats must fit in one TTL"),
    ({"etcd_timeout": 9, "heartbeat_interval": 2, "host_lease_ttl": 10}, "one slow keep-alive"),
    ({"etcd_timeout": 5, "leader_lease_ttl": 4}, "LEADER_LEASE_TTL"),
    ({"etcd_endpoints": "nohostport"}, "not host:port"),
    ({"etcd_endpoints": ","}, "at least one"),
    ({"etcd_user": "root"}, "go together"),
    ({"log_level": "LOUD"}, "log_level"),
    ({"guacamole_vnc_address": "0.0.0.0"}, "every address of the host"),
    ({"guacamole_vnc_address": "::"}, "every address of the host"),
    ({"guacamole_vnc_address": "guacd.example"}, "does not appear to be an IPv4 or IPv6 address"),
    ({"guacamole_secret_key": "4c0b569e4c96df157eee1b65dd0e4d4"}, "guacamole_secret_key"),  # 31 digits
    ({"guacamole_vnc_address": "10.0.0.7", "guacamole_vnc_ports": 1000}, "could take the console proxy's port"),
])
def test_bad_numbers_are_refused_when_config_loads(tmp_path: Path, overrides: dict, message: str) -> None:
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    with pytest.raises(ValidationError, match=message):
        load_settings(conf, **overrides)


def test_image_stores_must_exist(tmp_path: Path) -> None:
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    with pytest.raises(ValidationError, match="neither local nor the Ceph image pool"):
        load_settings(conf, image_stores="local,images")
    settings = load_settings(conf, image_stores="local,images", ceph_conf=tmp_path / "ceph.conf")
    assert settings.image_stores == ["local", "images"]


def test_guacamole_vnc_address_is_one_address(tmp_path: Path) -> None:
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    assert load_settings(conf).guacamole_vnc_address == ""  # off by default
    assert load_settings(conf, guacamole_vnc_address="[fd00::1]").guacamole_vnc_address == "fd00::1"
    assert load_settings(conf, guacamole_vnc_address="10.0.0.7").guacamole_vnc_address == "10.0.0.7"
