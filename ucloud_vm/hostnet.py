"""A host's data plane for ucloud networks, through netlink (pyroute2): per network a bridge and a
VXLAN device, per VM NIC a tap on that bridge, and the nftables table that keeps networks apart.

Device names come from ids (`ucloud_vm.netnames`), and every method looks at what exists before it
changes anything, so each call is idempotent, completes whatever a crash left half made, and an
agent restarted after `kill -9` adopts the devices it finds without touching a running VM's tap.

VXLAN without multicast: head-end replication. The VXLAN device has one all-zero-MAC fdb entry per
peer (`bridge fdb append 00:00:00:00:00:00 dev ucxN dst PEER`), so broadcast, multicast and unknown
unicast (neighbour discovery) go to every host of the network. Learning stays on: a reply teaches the
device which host a MAC is behind, so unicast goes to that one host instead of to all N. Learned
entries age out after 300 s and are dropped at once with their peer, and a migrated guest's
announcement (QEMU's self-announce after migration) re-teaches every peer where it went.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ucloud_common.config import Settings
from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_vm import isolation
from ucloud_vm.netnames import BRIDGE_PREFIX, VXLAN_PREFIX, bridge_name, is_tap, vni_of, vxlan_name

log = logging.getLogger(__name__)

VXLAN_PORT = 4789  # IANA's; Linux's own default (8472) predates it
ZERO_MAC = "00:00:00:00:00:00"
# Outer Ethernet 14 + IP (20 or 40) + UDP 8 + VXLAN 8 bytes, so a full inner frame still fits in
# one underlay packet (VXLAN packets must not be fragmented: RFC 7348 section 4.3).
OVERHEAD = {4: 50, 6: 70}
IFF_UP = 0x1
RETRY_S = 5.0
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnderlayError(PermanentError):
    """The underlay cannot work as configured (no such device, an address this host does not have,
    a peer of the other IP family): retrying is useless until the configuration changes."""


class HostNetError(TemporaryError):
    """Netlink refused a change (typically a race with another change of the same device). Nothing
    is rolled back: calling the same method again later completes the work."""


@dataclass(frozen=True)
class Underlay:
    """Where VXLAN packets leave this host: a local `device` and/or a local `address` (IPv4 or
    IPv6). With only the device, its first global address is used (IPv6 first); with only the
    address, the device holding it."""

    device: str = ""
    address: str = ""
    port: int = VXLAN_PORT

    @classmethod
    def from_settings(cls, settings: Settings) -> Underlay:
        return cls(settings.underlay_device, settings.underlay_address, settings.vxlan_port)


@dataclass(frozen=True)
class _Local:
    index: int
    address: Address
    mtu: int  # the underlay device's

    @property
    def overlay_mtu(self) -> int:
        return self.mtu - OVERHEAD[self.address.version]


@dataclass(frozen=True)
class NetworkDevices:
    """What exists of network `vni` on this host. A half-made network (a crash between two steps)
    has `bridge` or `vxlan` None; `ensure` completes it."""

    vni: int
    bridge: str | None
    vxlan: str | None
    taps: frozenset[str]
    peers: frozenset[str]  # the VXLAN device's head-end replication targets
    mtu: int | None  # the VXLAN device's

    @property
    def complete(self) -> bool:
        return self.bridge is not None and self.vxlan is not None


class HostNetwork:
    """The ucloud networks of one host, in network namespace `netns` (None: the current one).
    Methods are serialized by a lock, so agent workers may call them concurrently. Each opens its
    own netlink socket, so nothing goes stale between calls.

    `router_of` answers which VNIs this host is the router of, asked each time the isolation rules
    are written: their bridges may forward to the outside (never to another ucloud bridge). It is the
    hook of the router role (issue 12, item 2); by default the host routes for no network."""

    def __init__(self, netns: str | None = None,
                 router_of: Callable[[], Collection[int]] = frozenset) -> None:
        self.netns = netns
        self.router_of = router_of
        self._lock = threading.Lock()

    def check(self, underlay: Underlay) -> str:
        """Say which device and address `underlay` resolves to here, with the MTU VM networks get;
        `UnderlayError` if it cannot work (an agent checks this before it serves)."""
        with self._netlink("the underlay") as ipr:
            local = _resolve(ipr, underlay)
            device = ipr.link("get", index=local.index)[0].get_attr("IFLA_IFNAME")
        return f"{device} {local.address} (VM networks get MTU {local.overlay_mtu})"

    def ensure(self, vni: int, peers: Iterable[str], underlay: Underlay) -> NetworkDevices:
        """Network `vni` exists here, up, with VXLAN over `underlay` to exactly `peers` (other hosts'
        underlay addresses; this host's own is ignored), and the isolation rules include it. A VXLAN
        device made for another underlay is made again."""
        with self._netlink(f"network {vni}") as ipr:
            local = _resolve(ipr, underlay)
            wanted = _check_peers(peers, local)
            bridge = _ensure_link(ipr, bridge_name(vni), kind="bridge",
                                  # Snooping needs an MLD querier on the segment, which a VXLAN
                                  # network has none of: flooding is what head-end replication does.
                                  br_mcast_snooping=0)
            _converge(ipr, bridge, mtu=local.overlay_mtu)
            vxlan = _ensure_vxlan(ipr, vni, local, underlay.port)
            _converge(ipr, vxlan, mtu=local.overlay_mtu, master=bridge["index"])
            _sync_fdb(ipr, vxlan["index"], wanted)
            present = _present(ipr)
            self._isolate(present)
            return present[vni]

    def ensure_tap(self, vni: int, tap: str) -> None:
        """A persistent tap `tap` (see `netnames.tap_name`) exists, on network `vni`'s bridge, up,
        at the network's MTU, ready for QEMU's `-netdev tap,ifname=TAP,script=no,downscript=no`
        (one queue: a persistent tap's multi-queue flag must match the opener's). A tap on another
        bridge is moved. HostNetError if the network is not ensured on this host."""
        with self._netlink(f"tap {tap}") as ipr:
            bridge = _link(ipr, bridge_name(vni))
            if bridge is None:
                raise HostNetError(f"network {vni} has no bridge on this host: ensure it before its tap {tap}",
                                   delay=RETRY_S)
            link = _ensure_link(ipr, tap, kind="tuntap", mode="tap", ifr={"no_pi": True})
            _converge(ipr, link, mtu=bridge.get("IFLA_MTU"), master=bridge["index"])

    def ensure_address(self, vni: int, address: str) -> None:
        """Network `vni`'s bridge holds `address` (with its prefix length): a router's gateway on
        the network. HostNetError if the network is not ensured on this host."""
        with self._netlink(f"address {address}") as ipr:
            bridge = _link(ipr, bridge_name(vni))
            if bridge is None:
                raise HostNetError(f"network {vni} has no bridge on this host: ensure it before its address",
                                   delay=RETRY_S)
            ip, length = address.split("/")
            held = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=bridge["index"])}
            if str(ipaddress.ip_address(ip)) not in held:
                ipr.addr("add", index=bridge["index"], address=ip, prefixlen=int(length))

    def remove_tap(self, tap: str) -> None:
        """Tap `tap` is gone (a QEMU holding it open keeps a dead fd); nothing if it was."""
        with self._netlink(f"tap {tap}") as ipr:
            _delete(ipr, tap)

    def remove(self, vni: int) -> None:
        """Network `vni` is gone from this host: its taps, VXLAN device and bridge; the isolation
        rules without it (the table itself with the last network). Nothing if it was."""
        with self._netlink(f"network {vni}") as ipr:
            for tap in sorted(_present(ipr).get(vni, _EMPTY).taps):
                _delete(ipr, tap)
            _delete(ipr, vxlan_name(vni))
            _delete(ipr, bridge_name(vni))
            self._isolate(_present(ipr))

    def present(self) -> dict[int, NetworkDevices]:
        """Every ucloud network that has a bridge or a VXLAN device here, found by name."""
        with self._netlink("listing networks") as ipr:
            return _present(ipr)

    def stray_taps(self) -> list[str]:
        """ucloud taps on no ucloud bridge (a crash between making a tap and attaching it): the
        agent removes those of no VM it runs, and ensures the others."""
        with self._netlink("listing taps") as ipr:
            links = ipr.get_links()
            bridges = _bridge_vnis(links)
            return sorted(link.get("IFLA_IFNAME") for link in links
                          if is_tap(link.get("IFLA_IFNAME")) and link.get("IFLA_MASTER") not in bridges)

    def _isolate(self, present: dict[int, NetworkDevices]) -> None:
        # Under the lock, so two changes never write their rulesets in the wrong order.
        bridges = [devices.bridge for devices in present.values() if devices.bridge]
        routed = [bridge_name(vni) for vni in self.router_of() if vni in present]
        isolation.apply(bridges, routed, self.netns)

    @contextmanager
    def _netlink(self, what: str) -> Iterator[Any]:
        with self._lock:
            try:
                with IPRoute(netns=self.netns) as ipr:
                    yield ipr
            except NetlinkError as exc:
                raise HostNetError(f"{what}: netlink refused a change: {exc}", delay=RETRY_S) from exc


_EMPTY = NetworkDevices(0, None, None, frozenset(), frozenset(), None)


def _link(ipr: Any, name: str) -> Any | None:
    """The link called `name`, or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _ensure_link(ipr: Any, name: str, **create: Any) -> Any:
    """The link `name`, made with `create` if missing (one made meanwhile by someone else counts)."""
    link = _link(ipr, name)
    if link is None:
        try:
            ipr.link("add", ifname=name, **create)
            log.info("made %s %s", create["kind"], name)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        link = _link(ipr, name)
        if link is None:
            raise HostNetError(f"{name} vanished right after it was made", delay=RETRY_S)
    return link


def _delete(ipr: Any, name: str) -> None:
    try:
        ipr.link("del", ifname=name)
        log.info("removed %s", name)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def _converge(ipr: Any, link: Any, mtu: int, master: int | None = None) -> None:
    """Set what differs of MTU, master and up: an unchanged device gets no netlink write."""
    change: dict[str, Any] = {}
    if link.get("IFLA_MTU") != mtu:
        change["mtu"] = mtu
    if master is not None and link.get("IFLA_MASTER") != master:
        change["master"] = master
    if not link["flags"] & IFF_UP:
        change["state"] = "up"
    if change:
        ipr.link("set", index=link["index"], **change)


def _resolve(ipr: Any, underlay: Underlay) -> _Local:
    if not underlay.device and not underlay.address:
        raise UnderlayError("no underlay configured: set UCLOUD_UNDERLAY_DEVICE and/or UCLOUD_UNDERLAY_ADDRESS")
    device = None
    if underlay.device:
        device = _link(ipr, underlay.device)
        if device is None:
            raise UnderlayError(f"the underlay device {underlay.device} (UCLOUD_UNDERLAY_DEVICE) does not exist "
                                "on this host")
    addresses = [(addr["index"], ipaddress.ip_address(addr.get("IFA_LOCAL") or addr.get("IFA_ADDRESS")))
                 for addr in ipr.get_addr() if addr["scope"] == 0]  # global scope only
    if underlay.address:
        try:
            wanted = ipaddress.ip_address(underlay.address)
        except ValueError:
            raise UnderlayError(f"UCLOUD_UNDERLAY_ADDRESS {underlay.address!r} is not an IP address") from None
        holders = [index for index, address in addresses if address == wanted]
        if not holders or (device is not None and device["index"] not in holders):
            where = f"on {underlay.device}" if device is not None else "on any interface of this host"
            raise UnderlayError(f"the underlay address {wanted} (UCLOUD_UNDERLAY_ADDRESS) is not {where}")
        index = device["index"] if device is not None else holders[0]
    else:
        index = device["index"]
        mine = sorted((address for i, address in addresses if i == index), key=lambda a: -a.version)
        if not mine:
            raise UnderlayError(f"the underlay device {underlay.device} has no global address: give it one or "
                                "set UCLOUD_UNDERLAY_ADDRESS")
        wanted = mine[0]
    mtu = (device or ipr.link("get", index=index)[0]).get("IFLA_MTU")
    return _Local(index, wanted, mtu)


def _check_peers(peers: Iterable[str], local: _Local) -> frozenset[Address]:
    wanted = set()
    for peer in peers:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            raise UnderlayError(f"peer {peer!r} is not an IP address") from None
        if address.version != local.address.version:
            raise UnderlayError(f"peer {address} is IPv{address.version} but this host's underlay address "
                                f"{local.address} is IPv{local.address.version}")
        wanted.add(address)
    wanted.discard(local.address)
    return frozenset(wanted)


def _ensure_vxlan(ipr: Any, vni: int, local: _Local, port: int) -> Any:
    name = vxlan_name(vni)
    spec: dict[str, Any] = {
        "vxlan_id": vni, "vxlan_link": local.index, "vxlan_port": port, "vxlan_learning": 1,
        "vxlan_local" if local.address.version == 4 else "vxlan_local6": str(local.address),
    }
    link = _link(ipr, name)
    if link is not None and not _vxlan_matches(link, spec):
        # VNI, underlay and port cannot be changed on a live VXLAN device: make it again (its
        # network is cut for the few milliseconds this takes, once, after a configuration change).
        log.warning("%s was made for another underlay: making it again", name)
        _delete(ipr, name)
    return _ensure_link(ipr, name, kind="vxlan", **spec)


def _vxlan_matches(link: Any, spec: dict[str, Any]) -> bool:
    info = link.get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get("IFLA_INFO_DATA")
    for key, value in spec.items():
        have = data.get("IFLA_" + key.upper())
        if key.startswith("vxlan_local"):
            have = have and ipaddress.ip_address(have)
            value = ipaddress.ip_address(value)
        if have != value:
            return False
    return True


def _sync_fdb(ipr: Any, index: int, peers: frozenset[Address]) -> None:
    """Exactly one all-zero entry per peer; every entry to a host that is no peer any more (its
    replication entry and what was learned behind it) goes."""
    have = set()
    for entry in ipr.fdb("dump", ifindex=index):
        dst, mac = entry.get("NDA_DST"), entry.get("NDA_LLADDR")
        if dst is None or entry["ifindex"] != index:
            continue  # the bridge's own entries for this port
        address = ipaddress.ip_address(dst)
        if address in peers:
            if mac == ZERO_MAC:
                have.add(address)
            continue
        ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
        log.info("vxlan %d: %s behind %s forgotten: no peer any more", index, mac, dst)
    for peer in sorted(peers - have, key=str):
        ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=str(peer))


def _fdb_peers(ipr: Any, index: int) -> frozenset[str]:
    return frozenset(str(ipaddress.ip_address(entry.get("NDA_DST"))) for entry in ipr.fdb("dump", ifindex=index)
                     if entry["ifindex"] == index and entry.get("NDA_LLADDR") == ZERO_MAC and entry.get("NDA_DST"))


def _ours(links: list[Any]) -> dict[int, dict[str, Any]]:
    """VNI → {"ucb": bridge link, "ucx": VXLAN link}, as far as they exist."""
    found: dict[int, dict[str, Any]] = {}
    for link in links:
        parsed = vni_of(link.get("IFLA_IFNAME"))
        if parsed is not None:
            found.setdefault(parsed[1], {})[parsed[0]] = link
    return found


def _bridge_vnis(links: list[Any]) -> dict[int, int]:
    """ifindex of each ucloud bridge → its VNI."""
    return {parts[BRIDGE_PREFIX]["index"]: vni for vni, parts in _ours(links).items() if BRIDGE_PREFIX in parts}


def _present(ipr: Any) -> dict[int, NetworkDevices]:
    links = ipr.get_links()
    found = _ours(links)
    bridges = _bridge_vnis(links)
    taps: dict[int, set[str]] = {}
    for link in links:
        if is_tap(link.get("IFLA_IFNAME")) and link.get("IFLA_MASTER") in bridges:
            taps.setdefault(bridges[link.get("IFLA_MASTER")], set()).add(link.get("IFLA_IFNAME"))
    result = {}
    for vni, parts in found.items():
        vxlan = parts.get(VXLAN_PREFIX)
        result[vni] = NetworkDevices(
            vni=vni,
            bridge=bridge_name(vni) if BRIDGE_PREFIX in parts else None,
            vxlan=vxlan_name(vni) if vxlan is not None else None,
            taps=frozenset(taps.get(vni, ())),
            peers=_fdb_peers(ipr, vxlan["index"]) if vxlan is not None else frozenset(),
            mtu=vxlan.get("IFLA_MTU") if vxlan is not None else None,
        )
    return result
