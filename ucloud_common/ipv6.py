"""IPv6 addressing of VM networks: every network has one /64, and a guest's address in it is SLAAC
from its MAC (modified EUI-64, RFC 4291 appendix A), so the API can show it without asking the guest.

A guest that uses RFC 7217 stable-privacy or RFC 4941 temporary addresses has others as well; the
EUI-64 one is what a kernel configures by default (`addr_gen_mode` eui64) and what cloud images keep.
"""

from __future__ import annotations

import ipaddress
import random


def check_prefix(prefix: str) -> ipaddress.IPv6Network:
    """The /64 `prefix` as a network; ValueError saying why for anything else (SLAAC needs exactly
    64 bits of interface identifier)."""
    try:
        network = ipaddress.IPv6Network(prefix, strict=True)
    except ValueError as exc:
        raise ValueError(f"{prefix!r} is not an IPv6 prefix: {exc}") from None
    if network.prefixlen != 64:
        raise ValueError(f"{prefix} is a /{network.prefixlen}: a network's prefix must be a /64 (SLAAC "
                         "needs a 64-bit interface identifier)")
    return network


def interface_id(mac: str) -> int:
    """The modified EUI-64 interface identifier of a 48-bit MAC: ff:fe in the middle, the
    universal/local bit flipped."""
    octets = [int(part, 16) for part in mac.split(":")]
    if len(octets) != 6 or not all(0 <= octet <= 255 for octet in octets):
        raise ValueError(f"{mac!r} is not a MAC address (six hex octets separated by colons)")
    eui = [octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
    return int.from_bytes(bytes(eui), "big")


def slaac_address(prefix: str, mac: str) -> str:
    """The address a guest with `mac` gives itself by SLAAC in the /64 `prefix`, compressed
    (e.g. `2001:db8:1::5054:ff:fe12:3456`)."""
    network = check_prefix(prefix)
    return str(network.network_address + interface_id(mac))


def random_subnet(pool: str, rng: random.Random) -> str:
    """A /64 chosen at random within `pool` (a network of prefix length 64 or less)."""
    network = ipaddress.IPv6Network(pool, strict=True)
    if network.prefixlen > 64:
        raise ValueError(f"{pool} holds no /64")
    index = rng.randrange(2 ** (64 - network.prefixlen))
    return str(ipaddress.IPv6Network((int(network.network_address) + (index << 64), 64)))
