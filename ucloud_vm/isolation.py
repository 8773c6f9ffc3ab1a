"""Isolation of ucloud networks on one host with nftables: traffic never flows from one network's
bridge to another's, and a host routes nothing in or out of a network unless it is that network's
router.

Family `inet`, hook `forward`: two bridges on one host are separate L2 segments (separate VNIs), so
the only path between them is the host's own IP forwarding, which the `inet` forward hook sees for
IPv4 and IPv6 alike. The `bridge` family would only see frames inside one bridge, where there is
nothing to separate. The rules are written per bridge (`iifname X oifname != X`) rather than with a
wildcard on both sides, because where br_netfilter passes bridged frames to the IP hooks (Docker
turns `bridge-nf-call-ip6tables` on) a frame bridged inside X shows up with iif = oif = X and must
pass.

Applied with `nft -f -` in one transaction that replaces the whole `ucloud` table (or deletes it when
there is no network left): pyroute2's nftables support is too thin to build rules with, and nft's
own syntax is the stable interface.
"""

from __future__ import annotations

from collections.abc import Iterable

from ucloud_common.errors import TemporaryError
from ucloud_vm.netns import run_in

TABLE = "ucloud"


class IsolationError(TemporaryError):
    """nft refused or failed to apply the ruleset; the previous ruleset is still in force (one
    transaction). Applying again later is safe."""


def ruleset(bridges: Iterable[str], routed: Iterable[str] = ()) -> str:
    """The nft script that makes the `ucloud` table isolate `bridges`; `routed` are the bridges of
    the networks this host is the router of (the router role's hook: it may forward between such a
    bridge and the outside, never to another ucloud bridge). Without bridges the table is deleted."""
    # Creating the table first makes the delete succeed when it does not exist: the script is
    # idempotent in both directions.
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    names = sorted(set(bridges))
    if not names:
        return "\n".join(lines) + "\n"
    routers = set(routed)
    rules = []
    for bridge in names:
        if bridge in routers:
            # The way back (another bridge to this one) is the other bridge's own rule.
            rules.append(f'iifname "{bridge}" oifname "ucb*" oifname != "{bridge}" drop')
        else:
            rules.append(f'iifname "{bridge}" oifname != "{bridge}" drop')
            rules.append(f'oifname "{bridge}" iifname != "{bridge}" drop')
    lines += [
        f"table inet {TABLE} {{",
        "  chain forward {",
        # Before any other filter table (priority filter = 0), so an accept elsewhere cannot open it.
        "    type filter hook forward priority filter - 10; policy accept;",
        *(f"    {rule}" for rule in rules),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply(bridges: Iterable[str], routed: Iterable[str] = (), netns: str | None = None) -> None:
    """Make the `ucloud` table match `bridges` (see `ruleset`), atomically; idempotent."""
    result = run_in(netns, ["nft", "-f", "-"], stdin=ruleset(bridges, routed))
    if result.returncode != 0:
        raise IsolationError(f"nft could not apply the ucloud table: {result.stderr.strip()}", delay=5.0)
