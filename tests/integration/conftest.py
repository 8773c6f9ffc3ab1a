"""Daemons on a real etcd, for the tests of this directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ucloud_common.config import Settings
from ucloud_common.imagestore import local_image_path
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.fake_driver import FakeDriver
from ucloud_vm.storage import LocalStorage


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """Loops that turn quickly, and no resync within a test: what a loop misses stays missed."""
    return settings.model_copy(update={"host_check_interval": 0.3, "resync_interval": 600.0})


@pytest.fixture
def agent(store: Store, quick: Settings, tmp_path: Path) -> Agent:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(local_image_path(images, "tiny")), "16M"],
                   check=True)
    return Agent(store, quick, HostSpec("h1", "127.0.0.1", Specs(cpu=4, ram=4, ssd=10)), FakeDriver(),
                 {"local": LocalStorage(images, tmp_path / "disks")})
