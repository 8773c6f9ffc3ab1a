"""File-scan over a real tree and a real etcd."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ucloud_common.file import FILES
from ucloud_common.joblock import AlreadyRunning, single_run
from ucloud_common.store import Store
from ucloud_filescan.scan import scan

BIN = Path(sys.executable).parent


def registered(store: Store) -> dict[tuple[str, str], object]:
    return {(f.value.owner, f.value.filename): f.value for f in store.list(FILES).items.values()}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "alice" / "isos" / "old").mkdir(parents=True)
    (root / "bob").mkdir()
    (root / "alice" / "disk.qcow2").write_bytes(b"A" * 5000)
    (root / "alice" / "isos" / "old" / "deep.raw").write_bytes(b"deep")
    (root / "bob" / "b.img").write_bytes(b"bob's")
    (root / "alice" / "passwd").symlink_to("/etc/passwd")
    (root / "alice" / "isos" / "etc").symlink_to("/etc")
    os.mkfifo(root / "alice" / "pipe")
    (root / "alice" / "bad\nname").write_bytes(b"x")
    (root / "not a user!").mkdir()
    (root / "not a user!" / "f").write_bytes(b"x")
    return root


def test_registers_regular_files_only_and_is_idempotent(store: Store, tree: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        report = scan(store, tree, settle=0.1)
    files = registered(store)
    assert set(files) == {("alice", "disk.qcow2"), ("alice", "isos/old/deep.raw"), ("bob", "b.img")}
    disk = files[("alice", "disk.qcow2")]
    assert disk.size == 5000 and disk.sha512 == hashlib.sha512(b"A" * 5000).hexdigest()  # type: ignore[attr-defined]
    assert report.registered == 3
    assert "a symlink (never followed)" in caplog.text and "not a regular file" in caplog.text
    assert "control characters" in caplog.text and "not a user name" in caplog.text
    revision = store.revision()
    again = scan(store, tree, settle=0.1)
    assert again.unchanged == 3 and again.registered == again.updated == again.removed == 0
    assert store.revision() == revision, "a second run over an unchanged tree writes nothing"


def test_notices_changed_and_removed_files(store: Store, tree: Path) -> None:
    scan(store, tree, settle=0)
    before = registered(store)[("alice", "disk.qcow2")]
    (tree / "alice" / "disk.qcow2").write_bytes(b"B" * 10)
    os.utime(tree / "alice" / "disk.qcow2", ns=(1, 1_000_000_000))
    (tree / "bob" / "b.img").unlink()
    report = scan(store, tree, settle=0)
    files = registered(store)
    assert report.updated == 1 and report.removed == 1
    after = files[("alice", "disk.qcow2")]
    assert after.size == 10 and after.sha512 != before.sha512  # type: ignore[attr-defined]
    assert ("bob", "b.img") not in files


def test_a_file_being_written_is_left_for_the_next_run(store: Store, tree: Path) -> None:
    growing = tree / "alice" / "upload.part"
    growing.write_bytes(b"start")
    stop = threading.Event()

    def write() -> None:
        with open(growing, "ab") as file:
            while not stop.is_set():
                file.write(b"more")
                file.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        report = scan(store, tree, settle=0.3)
    finally:
        stop.set()
        writer.join()
    assert ("alice", "upload.part") not in registered(store) and report.skipped >= 1
    scan(store, tree, settle=0.1)
    assert registered(store)[("alice", "upload.part")].size == growing.stat().st_size  # type: ignore[attr-defined]


def test_one_run_at_a_time(tmp_path: Path, store: Store, tree: Path, etcd_server) -> None:  # type: ignore[no-untyped-def]
    with single_run(tmp_path, "ucloud-filescan"):
        with pytest.raises(AlreadyRunning):
            with single_run(tmp_path, "ucloud-filescan"):
                pass
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")},
               "UCLOUD_ETCD_ENDPOINTS": etcd_server.endpoint, "UCLOUD_LOCK_DIR": str(tmp_path),
               "UCLOUD_FILESCAN_SETTLE": "0", "UCLOUD_CONFIG": str(_empty(tmp_path))}
        busy = subprocess.run([str(BIN / "ucloud-filescan"), "run", "--upload-dir", str(tree)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 0 and "skipped: another ucloud-filescan run" in busy.stderr
        assert registered(store) == {}
    done = subprocess.run([str(BIN / "ucloud-filescan"), "run", "--upload-dir", str(tree)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "3 registered" in done.stderr, done.stderr


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.conf"
    path.write_text("")
    return path
