"""Simulated hosts in network namespaces: every namespace a test makes is deleted afterwards, with
whatever runs in it (radvd), so no device, process or rule outlives the test. Nothing here touches
the namespace pytest runs in."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

T = TypeVar("T")
GUEST_MTU = 1430  # the overlay MTU of an IPv6 underlay at 1500, as hostnet sets it


def sh(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside `netns`."""
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=check, timeout=30)


def pings(netns: str, address: str, wait: int = 2) -> bool:
    """One ICMP echo from `netns` to `address` is answered within `wait` s (a ping expected to go
    unanswered waits 1 s: on one host's veths an answer takes milliseconds)."""
    return sh(netns, "ping", "-c", "1", "-W", str(wait), address, check=False).returncode == 0


@dataclass
class Lab:
    """Makes namespaces (names unique to this process) and cleans them all up."""

    made: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        name = f"uc{os.getpid()}-{len(self.made)}{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        sh(name, "ip", "link", "set", "lo", "up")
        # No duplicate address detection: addresses are usable at once, so tests take no extra second.
        sh(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return name

    def hosts(self, count: int, version: int = 6) -> tuple[list[str], list[str]]:
        """`count` host namespaces whose `eth0` is joined to one bridge in an underlay namespace;
        returns the hosts and their underlay addresses."""
        underlay = self.ns("u")
        sh(underlay, "ip", "link", "add", "br0", "type", "bridge")
        sh(underlay, "ip", "link", "set", "br0", "up")
        hosts, addresses = [], []
        for i in range(1, count + 1):
            host = self.ns(f"h{i}")
            address = f"fd00::{i}" if version == 6 else f"10.99.0.{i}"
            sh(host, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}", "netns", underlay)
            sh(host, "ip", "addr", "add", f"{address}/{64 if version == 6 else 24}", "dev", "eth0")
            sh(host, "ip", "link", "set", "eth0", "up")
            sh(underlay, "ip", "link", "set", f"h{i}", "master", "br0", "up")
            hosts.append(host)
            addresses.append(address)
        return hosts, addresses

    def guest(self, host: str, bridge: str, address: str, mac: str | None = None) -> str:
        """A guest namespace whose `eth0` is a veth standing in for a VM's tap on `bridge` in `host`;
        `address` (with its prefix length) is static, or SLAAC when empty."""
        guest = self.ns("g")
        port = f"gv{len(self.made)}"
        sh(host, "ip", "link", "add", port, "mtu", str(GUEST_MTU), "type", "veth", "peer", "name", "eth0",
           "netns", guest)
        sh(host, "ip", "link", "set", port, "master", bridge, "up")
        if mac:
            sh(guest, "ip", "link", "set", "eth0", "address", mac)
        sh(guest, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1", "net.ipv6.conf.eth0.autoconf=1")
        if address:
            sh(guest, "ip", "addr", "add", address, "dev", "eth0")
        sh(guest, "ip", "link", "set", "eth0", "up")
        return guest

    def cleanup(self) -> None:
        for name in reversed(self.made):
            # Processes started in a namespace (radvd) keep it and its devices alive: end them.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
            for pid in pids.stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    made = Lab()
    try:
        yield made
    finally:
        made.cleanup()


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)
    return result
