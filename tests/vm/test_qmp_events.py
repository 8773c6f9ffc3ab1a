"""The QEMU driver follows each QEMU's events on its own monitor, on real QEMUs (CPUs stopped: no
guest needs to boot): a resume and a stop wake the VM's worker, the process's exit too, the
command socket stays free meanwhile, and a QEMU without an events socket is not followed."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from ucloud_common.vm import VM
from ucloud_vm.driver import RunState
from ucloud_vm.paths import VMPaths
from ucloud_vm.qemu import QemuDriver, execute


def a_vm(uuid: str) -> VM:
    return VM.model_validate({"uuid": uuid, "owner": "alice", "name": uuid, "image": "img",
                              "specs": {"cpu": 1, "ram": 0.25, "ssd": 1}})


class Woken:
    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def __call__(self, uuid: str) -> None:
        assert uuid == "followed"
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def after(self, count: int, what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count > count, 10), f"not woken by {what}"


def test_a_followed_qemu_wakes_its_vm_on_each_change_and_on_its_exit(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path / "run", "tcg")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1024 * 1024))
    paths = VMPaths.of(tmp_path / "run", "followed")
    driver.start(a_vm("followed"), [f"file={disk}", "format=raw", "readonly=on"], paused=True,
                 seed={"meta-data": b""}, nics={})
    try:
        woken = Woken()
        assert driver.follow("followed", woken)
        assert driver.follow("followed", woken)  # idempotent: still the one connection
        woken.after(0, "the subscription")  # once subscribed, a look at what happened before it
        seen = woken.count
        execute(paths, "cont")  # the command socket is free while the events are followed
        woken.after(seen, "RESUME")
        assert driver.observe("followed").state is RunState.RUNNING
        seen = woken.count
        execute(paths, "stop")
        woken.after(seen, "STOP")
        seen = woken.count
        pid = int(paths.pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        woken.after(seen, "the process's exit")
        assert driver.observe("followed").state is RunState.ABSENT
        # Nothing left to follow (once the connection is closed): the monitor looks.
        deadline = time.monotonic() + 5
        while driver.follow("followed", woken) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not driver.follow("followed", woken)
    finally:
        driver.kill("followed")


def test_a_qemu_without_an_events_socket_is_left_to_the_monitor(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path / "run", "tcg")
    VMPaths.of(tmp_path / "run", "old").root.mkdir(parents=True)
    assert not driver.follow("old", lambda uuid: None)


def test_a_socket_that_refuses_is_not_asked_again_at_once_nor_wakes_the_vm(tmp_path: Path) -> None:
    """A QEMU gone, its socket file left behind: one try, then the monitor's, for a while."""
    driver = QemuDriver(tmp_path / "run", "tcg")
    paths = VMPaths.of(tmp_path / "run", "stale")
    paths.root.mkdir(parents=True)
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(paths.qmp_events))  # bound, never listening: connections are refused
    woken: list[str] = []
    try:
        assert driver.follow("stale", woken.append)  # the one try
        deadline = time.monotonic() + 10
        while driver.follow("stale", woken.append) and time.monotonic() < deadline:
            time.sleep(0.05)
        tries = [driver.follow("stale", woken.append) for _ in range(100)]
        assert not any(tries) and woken == []
    finally:
        left.close()
        driver.close()
