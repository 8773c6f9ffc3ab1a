"""Running a command inside a network namespace: what nft and radvd need, since neither has a
netns option (pyroute2 enters namespaces for netlink itself)."""

from __future__ import annotations

import subprocess


def argv_in(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside the named namespace (`ip netns exec`), or as it is for the current one."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def run_in(netns: str | None, argv: list[str], stdin: str = "", timeout: float = 10.0
           ) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `netns` to completion, output captured; the caller checks `returncode`."""
    return subprocess.run(argv_in(netns, argv), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
