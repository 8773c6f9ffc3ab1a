"""Device names fit IFNAMSIZ and are recognised again from the name alone."""

import pytest

from ucloud_vm.netnames import bridge_name, tap_name, vni_of, vxlan_name


def test_names_fit_in_15_characters_and_round_trip() -> None:
    assert bridge_name(0xFFFFFF) == "ucbffffff" and vxlan_name(1) == "ucx1"
    assert tap_name("02:AB:cd:00:12:34") == "uct02abcd001234"
    assert max(len(bridge_name(0xFFFFFF)), len(tap_name("ff:ff:ff:ff:ff:ff"))) <= 15
    assert vni_of("ucb1234") == ("ucb", 0x1234) and vni_of("ucxffffff") == ("ucx", 0xFFFFFF)


@pytest.mark.parametrize("name", ["ucb01", "ucb0", "ucbz", "ucb1234567", "eth0", "uct0123abcd0"])
def test_other_names_are_not_ours(name: str) -> None:
    assert vni_of(name) is None


def test_out_of_range_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="24 bits"):
        bridge_name(0x1000000)
    with pytest.raises(ValueError, match="not a MAC"):
        tap_name("02:00:00:00:01")
