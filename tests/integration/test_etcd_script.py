"""deploy/etcd.sh's defrag gives the space a compaction freed back to the file system (README, "What
a VM costs etcd": compaction alone shrinks only `dbSizeInUse`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers.etcd import SCRIPT, EtcdServer


def db_size(etcd: EtcdServer) -> int:
    out = subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "endpoint", "status", "-w", "json"],
                         env={"ETCDCTL_API": "3"}, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["Status"]["dbSize"])


def test_defrag_shrinks_the_file_after_a_compaction(tmp_path: Path) -> None:
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        value = "x" * 100_000
        for _ in range(100):  # 10 MB of revisions of one key
            subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "put", "k"], input=value, env={"ETCDCTL_API": "3"},
                           capture_output=True, text=True, check=True)
        revision = json.loads(subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "get", "k", "-w", "json"],
                                             env={"ETCDCTL_API": "3"}, capture_output=True, text=True,
                                             check=True).stdout)["header"]["revision"]
        subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "compact", "--physical", str(revision)],
                       env={"ETCDCTL_API": "3"}, capture_output=True, check=True)
        compacted = db_size(etcd)
        subprocess.run(["bash", str(SCRIPT), "defrag", str(etcd.directory)], capture_output=True, check=True)
        assert db_size(etcd) < compacted / 2
    finally:
        etcd.stop()
