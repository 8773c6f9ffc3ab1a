"""SLAAC addresses as a kernel computes them (modified EUI-64), and refused prefixes."""

import ipaddress
import random

import pytest

from ucloud_common.ipv6 import random_subnet, slaac_address


def test_slaac_address_is_modified_eui64() -> None:
    # The universal/local bit of the first octet flips; ff:fe goes in the middle (RFC 4291 app. A).
    assert slaac_address("2001:db8:1::/64", "52:54:00:12:34:56") == "2001:db8:1:0:5054:ff:fe12:3456"
    assert slaac_address("fd00:0:0:7::/64", "00:16:3e:AA:bb:CC") == "fd00::7:216:3eff:feaa:bbcc"


@pytest.mark.parametrize("prefix, why", [("2001:db8::/48", "is a /48"), ("2001:db8::1/64", "not an IPv6 prefix"),
                                         ("10.0.0.0/8", "not an IPv6 prefix")])
def test_anything_but_a_64_is_refused_with_the_reason(prefix: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        slaac_address(prefix, "52:54:00:12:34:56")


def test_a_malformed_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        slaac_address("2001:db8::/64", "52:54:00:12:34")


def test_random_subnets_are_64s_inside_the_pool() -> None:
    rng = random.Random(1)
    pool = ipaddress.IPv6Network("fd75:636c:6f75::/48")
    subnets = {random_subnet(str(pool), rng) for _ in range(100)}
    assert len(subnets) > 90
    assert all(ipaddress.IPv6Network(s).subnet_of(pool) and s.endswith("::/64") for s in subnets)
    assert random_subnet("2001:db8:0:7::/64", rng) == "2001:db8:0:7::/64"
    with pytest.raises(ValueError):
        random_subnet("2001:db8::/96", rng)
