"""IPv6 for VMs: one /64 per network, and each NIC's address from its MAC (SLAAC, EUI-64).

A guest configures its address itself from the router advertisement on its network, the way
RFC 4862 says: the /64 prefix, and the interface identifier made from its MAC by EUI-64 (RFC 4291
appendix A). Computing the same here lets the API show a VM's addresses without asking the guest.
"""

from __future__ import annotations

import ipaddress
import random


def slaac_address(prefix: str, mac: str) -> str:
    """The address a NIC with `mac` takes by SLAAC (EUI-64) on the /64 `prefix`."""
    network = ipaddress.IPv6Network(prefix, strict=True)
    if network.prefixlen != 64:
        raise ValueError(f"{prefix} is not a /64")
    octets = [int(part, 16) for part in mac.split(":")]
    if len(octets) != 6:
        raise ValueError(f"{mac} is not a MAC address")
    # EUI-64: ff:fe in the middle, and the universal/local bit flipped.
    eui64 = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(network[int.from_bytes(eui64, "big")])


def random_subnet(pool: str, rng: random.Random) -> str:
    """A /64 chosen at random within `pool` (a network of prefix length 64 or less)."""
    network = ipaddress.IPv6Network(pool, strict=True)
    if network.prefixlen > 64:
        raise ValueError(f"{pool} holds no /64")
    index = rng.randrange(2 ** (64 - network.prefixlen))
    return str(ipaddress.IPv6Network((int(network.network_address) + (index << 64), 64)))
