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

from tests.helpers.metrics import parse, value
from ucloud_common.file import FILES
from ucloud_common.joblock import AlreadyRunning, single_run
from ucloud_common.quota import USAGES
from ucloud_common.store import Store
from ucloud_common.user import USERS, User
from ucloud_filescan.scan import Limits, Seen, in_turns, scan

BIN = Path(sys.executable).parent


def registered(store: Store) -> dict[tuple[str, str], object]:
    return {(f.value.owner, f.value.filename): f.value for f in store.list(FILES).items.values()}


@pytest.fixture
def tree(tmp_path: Path, store: Store) -> Path:
    for name in ("alice", "bob"):
        store.create(USERS, name, User(name=name))
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
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


def test_registered_files_are_counted_in_their_owners_usage(store: Store, tree: Path) -> None:
    """Each registration, change and removal moves the owner's upload_bytes in its own transaction."""
    scan(store, tree, settle=0)
    assert upload_bytes(store, "alice") == 5000 + 4 and upload_bytes(store, "bob") == 5
    (tree / "alice" / "disk.qcow2").write_bytes(b"B" * 10)
    os.utime(tree / "alice" / "disk.qcow2", ns=(1, 1_000_000_000))
    (tree / "bob" / "b.img").unlink()
    scan(store, tree, settle=0)
    assert upload_bytes(store, "alice") == 10 + 4 and upload_bytes(store, "bob") == 0


def upload_bytes(store: Store, user: str) -> int:
    usage = store.get(USAGES, user)
    assert usage is not None
    return usage.value.upload_bytes


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


def _remove_deep(top: Path) -> None:
    """rm -rf without recursion: pytest's own clean-up of old temporary folders (shutil.rmtree)
    recurses, and would fail every later session on a tree this deep."""
    subprocess.run(["rm", "-rf", "--", str(top)], check=True)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.conf"
    path.write_text("")
    return path


def test_a_tree_too_deep_for_recursion_is_skipped_for_that_folder_only(
        store: Store, tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1,100 folders deep made os.walk raise RecursionError: the run ended and nobody's file was registered."""
    deep = tree / "alice" / "deep"
    deep.mkdir()
    current = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1100):  # by fd: the whole path would pass PATH_MAX
        os.mkdir("d", dir_fd=current)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        os.close(current)
        current = inner
    os.close(current)
    (deep / "d" / "shallow.raw").write_bytes(b"near the top")
    try:
        with caplog.at_level(logging.INFO):
            report = scan(store, tree, settle=0)
    finally:
        _remove_deep(deep)
    files = registered(store)
    assert ("bob", "b.img") in files and ("alice", "disk.qcow2") in files
    assert ("alice", "deep/d/shallow.raw") in files
    assert report.registered == 4
    assert "deeper than 32 folders" in caplog.text


def test_one_users_entries_are_bounded_and_never_cost_them_their_registered_files(
        store: Store, tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    many = tree / "bob" / "many"
    many.mkdir()
    for i in range(30):
        (many / f"f{i:02}").write_bytes(b"x")
    scan(store, tree, settle=0, limits=Limits(max_entries=100))
    assert sum(1 for owner, _ in registered(store) if owner == "bob") == 31
    with caplog.at_level(logging.INFO):
        report = scan(store, tree, settle=0, limits=Limits(max_entries=10))
    assert "more than 10 entries" in caplog.text
    assert report.removed == 0, "files beyond the limit may still be there: they are not removed"
    assert sum(1 for owner, _ in registered(store) if owner == "bob") == 31
    assert ("alice", "disk.qcow2") in registered(store), "the other user is looked at whole"


def test_a_file_too_large_to_be_an_image_is_registered_unread_with_the_reason(
        store: Store, tree: Path, tmp_path: Path) -> None:
    """An 8 GiB sparse file was hashed for 55 s before image-scanner refused it for its size."""
    raw = tree / "alice" / "big.raw"
    with open(raw, "wb") as file:
        file.truncate(2 * 2**30)
    padded = tree / "alice" / "padded.qcow2"  # a 1 MiB disk in a 1 GiB file: nothing needs the rest
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(padded), "1M"], check=True)
    os.truncate(padded, 2**30)
    report = scan(store, tree, settle=0, limits=Limits(image_max_size=1))
    files = registered(store)
    assert files[("alice", "big.raw")].refused == "virtual size 2.0 GiB exceeds the limit of 1 GiB"  # type: ignore[attr-defined]
    assert files[("alice", "padded.qcow2")].refused == (  # type: ignore[attr-defined]
        "the file (1.0 GiB) is larger than any qcow2 of virtual size 0.0 GiB needs to be")
    assert files[("alice", "big.raw")].sha512 == "" and report.too_large == 2  # type: ignore[attr-defined]
    assert files[("alice", "disk.qcow2")].refused == ""  # type: ignore[attr-defined]
    again = scan(store, tree, settle=0, limits=Limits(image_max_size=1))
    assert again.unchanged == 5 and again.too_large == 0, "not even opened again while unchanged"


def test_each_user_is_read_in_turns_up_to_their_share() -> None:
    def seen(owner: str, name: str, size: int) -> Seen:
        return Seen(owner, name, Path(name), 0, 0, size, 0)

    greedy = [seen("greedy", f"g{i}", 10) for i in range(5)]
    modest = [seen("modest", "small", 1), seen("modest", "big", 30)]
    order = [(i.owner, i.filename) for i in in_turns(greedy + modest, share=25)]
    assert order == [("modest", "small"), ("greedy", "g0"), ("modest", "big"), ("greedy", "g1"), ("greedy", "g2")]


def test_a_run_writes_its_figures_for_the_node_exporter(tmp_path: Path, store: Store, tree: Path,
                                                       etcd_server) -> None:  # type: ignore[no-untyped-def]
    textfiles = tmp_path / "textfiles"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")},
           "UCLOUD_ETCD_ENDPOINTS": etcd_server.endpoint, "UCLOUD_LOCK_DIR": str(tmp_path),
           "UCLOUD_FILESCAN_SETTLE": "0", "UCLOUD_CONFIG": str(_empty(tmp_path)),
           "UCLOUD_METRICS_TEXTFILE_DIR": str(textfiles)}
    started = time.time()
    registered_per_run = []
    for _ in range(2):  # the second run registers nothing: the file says what the last run did
        done = subprocess.run([str(BIN / "ucloud-filescan"), "run", "--upload-dir", str(tree)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        figures = parse((textfiles / "ucloud_filescan.prom").read_text())
        registered_per_run.append(value(figures, "ucloud_filescan_files_registered"))
    assert registered_per_run == [3, 0]
    assert value(figures, "ucloud_filescan_files_unchanged") == 3
    assert started <= value(figures, "ucloud_filescan_last_run_timestamp_seconds") <= time.time()
    assert [p.name for p in textfiles.iterdir()] == ["ucloud_filescan.prom"], "no temporary file left"


def test_a_folder_of_no_user_and_uploads_being_received_are_skipped(store: Store, tree: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A folder named as no user (made by hand, or a deleted user's) had its files registered, to be
    inherited by whoever was later created with that name; an upload the API was still receiving
    would have been registered half written."""
    (tree / "carol").mkdir()
    (tree / "carol" / "orphan.img").write_bytes(b"nobody's")
    (tree / "alice" / ".upload-0123456789abcdef").write_bytes(b"half")
    with caplog.at_level(logging.INFO):
        scan(store, tree, settle=0)
    files = registered(store)
    assert ("carol", "orphan.img") not in files and ("alice", ".upload-0123456789abcdef") not in files
    assert "no user is named carol" in caplog.text and "an upload still being received" in caplog.text
    store.update(USERS, "bob", lambda bob: bob.evolve(deleting_since=bob.created_at))
    assert scan(store, tree, settle=0).removed == 1, "a user being deleted keeps no registered file"
    assert ("bob", "b.img") not in registered(store)
