"""The networks of this host's VMs: what `hostnet` must hold for them, derived from etcd.

For each network with a VM here: the bridge and VXLAN device, with a head-end replication entry
for every other host that has a VM of the network or is a router (its address as registered), a
tap per NIC, and the network's /64 announced on the bridge by router advertisements — on-link only
by a host that is not a router, so guests of one network reach each other on it.

The router role is chosen by configuration (`UCLOUD_ROUTER`, recorded on the host): a router joins
every network, VM or not, takes `<prefix>::1` on its bridge and announces itself as the default
router; routing the /64s on to the outside (forwarding on, a route to the prefixes) is the
operator's, as for any router. Everything is idempotent and found again by name after a restart.
"""

from __future__ import annotations

import logging

from ucloud_common.errors import PermanentError
from ucloud_common.host import HOSTS
from ucloud_common.ipv6 import check_prefix
from ucloud_common.network import NETWORKS, Network
from ucloud_common.store import AbstractStore
from ucloud_common.vm import NIC, VM, VMS
from ucloud_vm.hostnet import HostNetwork, Underlay, UnderlayError
from ucloud_vm.netnames import bridge_name, tap_name
from ucloud_vm.radvd import Announcement, Radvd

log = logging.getLogger(__name__)


class NICError(PermanentError):
    """A NIC this host cannot give its VM; the VM runs without it (`VM.nic_errors`)."""


class VMNetworks:
    def __init__(self, store: AbstractStore, host: str, devices: HostNetwork, underlay: Underlay,
                 radvd: Radvd, router: bool = False) -> None:
        self._store = store
        self._host = host
        self._devices = devices
        self._underlay = underlay
        self._radvd = radvd
        self._router = router
        self._problems: set[str] = set()  # what the last refresh could not do

    def plug(self, vm: VM) -> tuple[dict[str, str], dict[str, str]]:
        """Make this host ready for `vm`'s NICs, before its start: MAC → tap for QEMU, and MAC →
        reason for each NIC it cannot have (`NICError`; the VM starts without those)."""
        taps, failed = {}, {}
        for nic in vm.networks:
            try:
                taps[nic.mac] = self._tap(vm, nic)
            except NICError as exc:
                log.warning("vm=%s: NIC %s left out: %s", vm.uuid, nic.mac, exc)
                failed[nic.mac] = exc.reason
        self._announce()
        return taps, failed

    def plug_nic(self, vm: VM, mac: str) -> str:
        """Make this host ready for one NIC of `vm` (hot-plug); return its tap. `NICError` if it
        cannot be: the VM has no such NIC, or see `_tap`."""
        nic = next((n for n in vm.networks if n.mac == mac), None)
        if nic is None:
            raise NICError(f"VM {vm.uuid} has no NIC {mac}")
        tap = self._tap(vm, nic)
        self._announce()
        return tap

    def unplug_nic(self, mac: str) -> None:
        """One NIC has left its VM (hot-unplug): its tap goes, and its network if no tap needs it."""
        self._devices.remove_tap(tap_name(mac))
        self.refresh()

    def _tap(self, vm: VM, nic: NIC) -> str:
        """The NIC's network made here, and its tap in it. `NICError` if its network is gone (the
        API detaches NICs before it deletes a network, so only a race or a hand-edited record
        gets here), another VM has its MAC (one tap per MAC, and one MAC per link), or the
        underlay does not work."""
        network = self._store.get(NETWORKS, nic.network)
        if network is None:
            raise NICError(f"network {nic.network} does not exist")
        twin = next((other.name for other in self._store.list(VMS).items.values() if other.name != vm.uuid
                     and any(n.mac == nic.mac for n in other.value.networks)), None)
        if twin is not None:
            raise NICError(f"MAC {nic.mac} is also a NIC of VM {twin}")
        try:
            self._ensure(network.value)
        except UnderlayError as exc:
            raise NICError(str(exc)) from None
        self._devices.ensure_tap(network.value.vxlan_id, tap_name(nic.mac))
        return tap_name(nic.mac)

    def unplug(self, vm: VM) -> None:
        """`vm` has left this host (deleted, or placed elsewhere): its taps go, and each network
        that no other tap here needs goes with them."""
        for nic in vm.networks:
            self._devices.remove_tap(tap_name(nic.mac))
        self.refresh()

    def refresh(self) -> None:
        """Bring every network here up to date: peers as hosts come and go, taps put back on their
        bridge, networks without a tap removed, the announcements rewritten. Called now and then by
        the agent's monitor."""
        networks = self._networks()
        problems = set()
        if self._router:  # a router is on every network, with or without a VM of it here
            for network in networks.values():
                problems.add(self._try_ensure(network))
        problems |= self._adopt_strays({network.uuid: network for network in networks.values()})
        for vni, devices in self._devices.present().items():
            network = networks.get(vni)
            if network is None or not (devices.taps or self._router):
                log.info("network %s (VNI %d) has no VM on %s any more: removing it", network and network.uuid, vni,
                         self._host)
                self._devices.remove(vni)
            else:
                problems.add(self._try_ensure(network))
        problems.discard("")
        if problems != self._problems:  # told when it starts or changes, not at every refresh
            for problem in sorted(problems):
                log.error("host %s: VM networks cannot be kept up: %s", self._host, problem)
            self._problems = problems
        self._announce()

    def _adopt_strays(self, networks: dict[str, Network]) -> set[str]:
        """Taps on no bridge — their bridge deleted under them (by hand, or by another cluster's
        agent in the same namespace), or a crash between making a tap and attaching it: a NIC of a
        VM placed here goes back on its network's bridge (its guest never notices more than the
        gap); any other is removed."""
        strays = self._devices.stray_taps()
        if not strays:
            return set()
        nics = {tap_name(nic.mac): nic for vm in self._store.list(VMS).items.values()
                if vm.value.host == self._host for nic in vm.value.networks}
        problems = set()
        for tap in strays:
            network = networks.get(nics[tap].network) if tap in nics else None
            if network is None:
                log.info("tap %s is of no NIC on %s: removing it", tap, self._host)
                self._devices.remove_tap(tap)
                continue
            problem = self._try_ensure(network)
            if not problem:
                self._devices.ensure_tap(network.vxlan_id, tap)
                log.warning("tap %s was on no bridge: put back on network %s", tap, network.uuid)
            problems.add(problem)
        return problems

    def _try_ensure(self, network: Network) -> str:
        try:
            self._ensure(network)
        except UnderlayError as exc:
            return str(exc)
        return ""

    def _ensure(self, network: Network) -> None:
        self._devices.ensure(network.vxlan_id, self._peers(network.uuid), self._underlay)
        if self._router and network.ipv6_prefix:
            self._devices.ensure_address(network.vxlan_id, f"{check_prefix(network.ipv6_prefix)[1]}/64")

    def _peers(self, network: str) -> set[str]:
        """The underlay addresses of the other hosts with a VM on `network`, and of the routers."""
        with_vms = {vm.value.host for vm in self._store.list(VMS).items.values()
                    if vm.value.host and any(n.network == network for n in vm.value.networks)}
        return {host.value.address for host in self._store.list(HOSTS).items.values()
                if host.name != self._host and (host.name in with_vms or host.value.router) and host.value.address}

    def _networks(self) -> dict[int, Network]:
        """Every network, by VNI (one read of the family, not one per network here)."""
        return {n.value.vxlan_id: n.value for n in self._store.list(NETWORKS).items.values()}

    def _announce(self) -> None:
        networks = self._networks()
        announcements: dict[str, Announcement] = {}
        for vni, devices in self._devices.present().items():
            network = networks.get(vni)
            if network is not None and network.ipv6_prefix:
                announcements[bridge_name(vni)] = Announcement(network.ipv6_prefix, devices.mtu, self._router)
        self._radvd.apply(announcements)
