"""SLAAC addresses as guests compute them, and /64s drawn from a pool."""

from __future__ import annotations

import ipaddress
import random

import pytest

from ucloud_common.ipv6 import random_subnet, slaac_address


def test_slaac_address_is_the_eui64_of_the_mac() -> None:
    # RFC 4291 appendix A: 52:54:00:12:34:56 → interface id 5054:ff:fe12:3456 (u/l bit flipped).
    assert slaac_address("2001:db8:1::/64", "52:54:00:12:34:56") == "2001:db8:1:0:5054:ff:fe12:3456"
    assert slaac_address("fd00:1:2:3::/64", "02:00:00:00:00:01") == "fd00:1:2:3:0:ff:fe00:1"


@pytest.mark.parametrize("prefix, mac", [("2001:db8::/48", "02:00:00:00:00:01"),
                                         ("2001:db8::/64", "02:00:00:00:01"), ("2001:db8::1/64", "02:00:00:00:00:01")])
def test_slaac_address_refuses_what_is_not_a_64_and_a_mac(prefix: str, mac: str) -> None:
    with pytest.raises(ValueError):
        slaac_address(prefix, mac)


def test_random_subnets_are_64s_inside_the_pool() -> None:
    rng = random.Random(1)
    pool = ipaddress.IPv6Network("fd75:636c:6f75::/48")
    subnets = {random_subnet(str(pool), rng) for _ in range(100)}
    assert len(subnets) > 90
    assert all(ipaddress.IPv6Network(s).subnet_of(pool) and s.endswith("::/64") for s in subnets)
    assert random_subnet("2001:db8:0:7::/64", rng) == "2001:db8:0:7::/64"
    with pytest.raises(ValueError):
        random_subnet("2001:db8::/96", rng)
