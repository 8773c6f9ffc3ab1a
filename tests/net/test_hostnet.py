"""The data plane on simulated hosts: namespaces joined by an underlay bridge, veths standing in for
VMs' taps, real VXLAN, fdb entries and nftables."""

from __future__ import annotations

import subprocess

import pytest

from tests.net.conftest import Lab, pings, sh
from ucloud_common.errors import PermanentError
from ucloud_vm.hostnet import HostNetwork, Underlay, UnderlayError
from ucloud_vm.netnames import bridge_name, tap_name

VNI = 0x1234


def links(host: str) -> list[str]:
    """Every device of `host` with its index, MTU, UP flag and master: what 'nothing changed'
    compares (carrier and multicast entries change on their own as links come up)."""
    result = []
    for line in sh(host, "ip", "-o", "link", "show").stdout.splitlines():
        words = line.split()
        master = words[words.index("master") + 1] if "master" in words else ""
        result.append(f"{words[0]} {words[1]} {'UP' in words[2]} {words[words.index('mtu') + 1]} {master}")
    return result


def fdb(host: str, vni: int) -> list[str]:
    """The VXLAN device's entries towards other hosts."""
    return [line for line in sh(host, "bridge", "fdb", "show", "dev", f"ucx{vni:x}").stdout.splitlines()
            if " dst " in line]


def table_exists(host: str) -> bool:
    return sh(host, "nft", "list", "table", "inet", "ucloud", check=False).returncode == 0


@pytest.mark.parametrize("version", [6, 4])
def test_guests_on_two_hosts_reach_each_other_and_no_one_else(lab: Lab, version: int) -> None:
    (h1, h2), (a1, a2) = lab.hosts(2, version)
    for host, other in ((h1, a2), (h2, a1)):
        devices = HostNetwork(host).ensure(VNI, [other], Underlay(device="eth0"))
        assert devices.complete and devices.peers == {other}
        assert devices.mtu == 1500 - (70 if version == 6 else 50)
        HostNetwork(host).ensure(VNI + 1, [other], Underlay(device="eth0"))
    g1 = lab.guest(h1, bridge_name(VNI), "fd01::1/64")
    g2 = lab.guest(h2, bridge_name(VNI), "fd01::2/64")
    stranger = lab.guest(h2, bridge_name(VNI + 1), "fd01::3/64")  # same prefix, another network

    assert pings(g1, "fd01::2") and pings(g2, "fd01::1")
    assert not pings(stranger, "fd01::1", wait=1)
    assert not pings(stranger, "fd01::2", wait=1)


def test_ensure_is_idempotent_completes_a_half_made_network_and_remove_leaves_nothing(lab: Lab) -> None:
    (h1,), _ = lab.hosts(1)
    net = HostNetwork(h1)
    underlay = Underlay(address="fd00::1")
    # A crash after the bridge, and after a VXLAN device that got neither its master nor its peers.
    sh(h1, "ip", "link", "add", bridge_name(VNI), "type", "bridge")
    sh(h1, "ip", "link", "add", f"ucx{VNI:x}", "type", "vxlan", "id", str(VNI), "dev", "eth0",
       "local", "fd00::1", "dstport", "4789")
    assert not HostNetwork(h1).present()[VNI].peers

    devices = net.ensure(VNI, ["fd00::2", "fd00::3", "fd00::1"], underlay)
    assert devices.complete and devices.peers == {"fd00::2", "fd00::3"}  # our own address is no peer
    before = links(h1), fdb(h1, VNI)
    assert net.ensure(VNI, ["fd00::3", "fd00::2"], underlay) == devices
    assert (links(h1), fdb(h1, VNI)) == before

    tap = tap_name("02:00:00:12:ab:cd")
    sh(h1, "ip", "tuntap", "add", tap, "mode", "tap")  # a crash before the tap was enslaved
    assert net.stray_taps() == [tap]
    net.ensure_tap(VNI, tap)
    net.ensure_tap(VNI, tap)
    assert net.stray_taps() == [] and net.present()[VNI].taps == {tap}
    assert f"master {bridge_name(VNI)}" in sh(h1, "ip", "link", "show", tap).stdout

    # A host gone: its replication entry goes (and nothing else changes).
    assert net.ensure(VNI, ["fd00::3"], underlay).peers == {"fd00::3"}
    assert "fd00::2" not in fdb(h1, VNI)
    # An agent restarted after kill -9 finds it all by name.
    assert HostNetwork(h1).present() == {VNI: net.present()[VNI]}

    net.remove(VNI)
    net.remove(VNI)
    assert net.present() == {}
    assert not any(prefix in line for line in links(h1) for prefix in ("ucb", "ucx", "uct"))
    assert not table_exists(h1)


def test_an_underlay_that_cannot_work_is_a_permanent_error_that_says_why(lab: Lab) -> None:
    (h1,), _ = lab.hosts(1)
    net = HostNetwork(h1)
    with pytest.raises(UnderlayError, match="eth9 .*does not exist"):
        net.ensure(VNI, [], Underlay(device="eth9"))
    with pytest.raises(PermanentError, match="fd00::9 .*is not on any interface"):
        net.ensure(VNI, [], Underlay(address="fd00::9"))
    with pytest.raises(UnderlayError, match="IPv4 but"):
        net.ensure(VNI, ["10.0.0.2"], Underlay(device="eth0"))
    assert net.present() == {}
    # What an agent checks before it serves: the loopback's addresses are not global.
    assert net.check(Underlay(device="eth0")) == "eth0 fd00::1 (VM networks get MTU 1430)"
    with pytest.raises(UnderlayError, match="127.0.0.1 .*is not on lo"):
        net.check(Underlay(device="lo", address="127.0.0.1"))


def test_isolation_keeps_two_networks_apart_even_with_forwarding_on(lab: Lab) -> None:
    (h1,), _ = lab.hosts(1)
    net = HostNetwork(h1)
    sh(h1, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    guests = []
    for vni, prefix in ((1, "fd01"), (2, "fd02")):
        net.ensure(vni, [], Underlay(device="eth0"))
        sh(h1, "ip", "addr", "add", f"{prefix}::ffff/64", "dev", bridge_name(vni))  # the host routes
        guest = lab.guest(h1, bridge_name(vni), f"{prefix}::1/64")
        sh(guest, "ip", "-6", "route", "add", "default", "via", f"{prefix}::ffff")
        guests.append(guest)
    assert pings(guests[0], "fd01::ffff")  # a network still reaches its own bridge

    subprocess.run(["ip", "netns", "exec", h1, "nft", "delete", "table", "inet", "ucloud"], check=True)
    assert pings(guests[0], "fd02::1"), "without the table the host routes between the networks"
    net.ensure(1, [], Underlay(device="eth0"))
    assert not pings(guests[0], "fd02::1", wait=1)
    assert not pings(guests[1], "fd01::1", wait=1)

    net.remove(1)
    assert table_exists(h1)
    net.remove(2)
    assert not table_exists(h1)
