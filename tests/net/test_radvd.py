"""radvd announces each network's /64 on its bridge; guests take the SLAAC address the API computes;
a change reloads radvd by SIGHUP; no network left, no radvd left."""

from __future__ import annotations

from pathlib import Path

from tests.net.conftest import Lab, sh, wait_for
from ucloud_common.ipv6 import slaac_address
from ucloud_vm.hostnet import HostNetwork, Underlay
from ucloud_vm.netnames import bridge_name
from ucloud_vm.radvd import Announcement, Radvd

MAC = "52:54:00:12:34:56"


def global_addresses(guest: str) -> set[str]:
    out = sh(guest, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie has an empty one
    except OSError:
        return False


def test_a_guest_gets_its_slaac_address_and_a_change_is_a_reload(lab: Lab, tmp_path: Path) -> None:
    (host,), _ = lab.hosts(1)
    mtu = HostNetwork(host).ensure(1, [], Underlay(device="eth0")).mtu
    assert mtu is not None
    guest = lab.guest(host, bridge_name(1), "", mac=MAC)
    radvd = Radvd(tmp_path, netns=host)

    pid = radvd.apply({bridge_name(1): Announcement("fd01:0:0:1::/64", mtu)})
    assert wait_for(lambda: slaac_address("fd01:0:0:1::/64", MAC) in global_addresses(guest),
                    what="the guest's SLAAC address")
    assert radvd.apply({bridge_name(1): Announcement("fd01:0:0:1::/64", mtu)}) == pid  # unchanged

    assert radvd.apply({bridge_name(1): Announcement("fd01:0:0:2::/64", mtu)}) == pid  # SIGHUP, same process
    wait_for(lambda: slaac_address("fd01:0:0:2::/64", MAC) in global_addresses(guest),
             what="the address in the new prefix")
    assert "fd01:0:0:2::/64" in radvd.config.read_text()

    assert radvd.apply({}) is None
    assert not alive(pid)
    assert not radvd.config.exists() and not radvd.pidfile.exists()


def test_only_a_router_announces_itself_as_the_default_router() -> None:
    from ucloud_vm.radvd import Announcement, render

    on_link = render({"ucb1": Announcement("fd00:1::/64", 1430)})
    routed = render({"ucb1": Announcement("fd00:1::/64", 1430, router=True)})
    assert "AdvDefaultLifetime 0;" in on_link and "AdvDefaultLifetime 1800;" in routed
