"""Fixtures of the Ceph tier: a client of the session's one-node Ceph, and the tiny image stored in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.ceph import CephServer
from tests.helpers.tiny import tiny_image
from ucloud_common.ceph import Ceph


@pytest.fixture
def ceph(ceph_server: CephServer) -> Iterator[Ceph]:
    client = Ceph(ceph_server.conf)
    yield client
    client.close()


@pytest.fixture
def tiny_in_rbd(ceph: Ceph) -> str:
    if not ceph.exists("images", "tiny"):
        ceph.store_image("images", "tiny", tiny_image() / "tiny.raw")
    return "tiny"
