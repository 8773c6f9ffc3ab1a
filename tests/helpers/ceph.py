"""A real one-node Ceph for tests, driven through deploy/ceph.sh."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.etcd import free_port
from tests.helpers.tiny import tiny_image
from ucloud_common.ceph import Ceph

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "ceph.sh"


class CephServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf = directory / "ceph.conf"
        # Free ports, so a developer's own Ceph on the default ones is never touched.
        self._env = {**os.environ, "CEPH_MON_PORT": str(free_port()), "CEPH_MON_PORT_V2": str(free_port())}

    def start(self) -> None:
        result = subprocess.run(["bash", str(SCRIPT), "start", str(self.directory)], capture_output=True, text=True,
                                timeout=180, env=self._env)
        if result.returncode != 0:
            logs = "".join(p.read_text(errors="replace")[-2000:] for p in (self.directory / "log").glob("*.log"))
            raise RuntimeError(f"ceph did not start: {result.stdout}{result.stderr}\n{logs}")

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.directory)], check=True, capture_output=True)


@contextmanager
def ceph_with_tiny(directory: Path) -> Iterator[Ceph]:
    """A one-node Ceph started in `directory` with the tiny image stored as images/tiny, and a
    client to it; both stopped afterwards (for benchmarks, which run outside pytest's fixtures)."""
    server = CephServer(directory)
    server.start()
    ceph = Ceph(server.conf)
    try:
        ceph.store_image("images", "tiny", tiny_image() / "tiny.raw")
        yield ceph
    finally:
        ceph.close()
        server.stop()
