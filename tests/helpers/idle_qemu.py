"""A real QEMU on an RBD clone of the tiny image whose guest never writes its disk: the QEMU of a
host that died while its VMs were idle. Such a QEMU has the image open (it watches the header) but
holds no exclusive lock, because librbd takes the lock lazily at the first write.

The QEMU is started from ucloud's own command line (`ucloud_vm.qemu.command_line`, the rbd drive of
`RBDStorage`) with one change: it runs in the foreground as our child instead of `-daemonize`, because
HMP's `qemu-io` prints its result ("wrote …" or "write failed: …") on QEMU's stdout, not in the QMP
reply (measured: the reply is "" either way), and a daemonized QEMU's stdout is /dev/null.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.ceph import Ceph
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_vm import qemu
from ucloud_vm.paths import VMPaths
from ucloud_vm.storage import RBDStorage, StorageError

DRIVE = "disk0"  # the drive id ucloud_vm.qemu.command_line gives the VM disk
START_TIMEOUT_S = 30.0
QEMU_IO_TIMEOUT_S = 20.0
RESULT = re.compile(r"^((wrote|read) \d+/\d+ bytes|(write|read) failed: )", re.MULTILINE)


@dataclass
class IdleQEMU:
    """A running QEMU (our child) with its guest paused, on the RBD disk of `vm`."""

    vm: VM
    paths: VMPaths
    process: subprocess.Popen[bytes]

    @property
    def stdout(self) -> Path:
        return self.paths.root / "stdout.log"

    def qemu_io(self, command: str, drive: str = DRIVE) -> str:
        """Run `qemu-io <drive> "<command>"` (a read or a write) in this QEMU's monitor; return what it
        printed: "wrote …"/"read …" on success, "… failed: <why>" on failure."""
        before = self.stdout.stat().st_size
        self.monitor(f'qemu-io {drive} "{command}"')
        deadline = time.monotonic() + QEMU_IO_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.stdout.read_bytes()[before:].decode(errors="replace")
            # QEMU's own "rbd request failed: …" may come first: wait for qemu-io's verdict line.
            if RESULT.search(text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"qemu-io {command!r} printed no result within {QEMU_IO_TIMEOUT_S} s")

    def monitor(self, command_line: str) -> None:
        """An HMP command, e.g. `qemu-io disk0 flush` (which prints nothing, whatever happens)."""
        qemu.execute(self.paths, "human-monitor-command", **{"command-line": command_line})

    def kill(self) -> None:
        """Stop QEMU: `quit` first, so it closes the image and unwatches it (the watch of a SIGKILLed
        QEMU lingers for osd_client_watch_timeout, 30 s, and keeps the image from being removed)."""
        if self.process.poll() is None:
            try:
                qemu.execute(self.paths, "quit")
                self.process.wait(timeout=10)
            except (qemu.QEMUError, subprocess.TimeoutExpired):
                self.process.kill()
        self.process.wait(timeout=30)


def a_vm(uuid: str) -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=0.25, ssd=1), image="tiny", storage="rbd")


def watchers(ceph: Ceph, pool: str, image: str) -> list[str]:
    """The addresses watching `pool/image`, read directly through rbd so this helper does not rely on
    the code under test (a read-only open adds no watcher of ours)."""
    import rbd

    with ceph.pool(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as handle:
        return [str(w["addr"]) for w in handle.watchers_list()]


def lockers(ceph: Ceph, pool: str, image: str) -> list[str]:
    """The addresses holding `pool/image`'s lock (managed exclusive lock or advisory)."""
    import rbd

    with ceph.pool(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as handle:
        info = handle.list_lockers()
        return [str(locker[2]) for locker in info["lockers"]] if info else []


def start_idle_qemu(ceph: Ceph, storage: RBDStorage, vm: VM, run_dir: Path) -> IdleQEMU:
    """Clone the disk, start QEMU on it, pause the guest and wait until QEMU watches the image. The
    caller must `kill()` it (or use `idle_qemus`, which does)."""
    storage.create(vm)
    paths = VMPaths.of(run_dir, vm.uuid)
    paths.root.mkdir(parents=True, exist_ok=True)
    argv = [arg for arg in qemu.command_line(vm, storage.drive(vm), paths, "tcg", hdd=storage.hdd_drive(vm))
            if arg != "-daemonize"]
    with open(paths.root / "stdout.log", "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    idle = IdleQEMU(vm, paths, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not paths.qmp.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"QEMU for {vm.uuid} did not start: {idle.stdout.read_text()[-500:]}")
            time.sleep(0.05)
        # Stop the guest so nothing at all runs in it (it would only read its disk anyway); QEMU has
        # opened the drive once it watches the image. The socket file exists a moment before QEMU
        # listens on it: a refused connection is tried again.
        while True:
            try:
                qemu.execute(paths, "stop")
                break
            except qemu.QMPFailed:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while not watchers(ceph, "vms", vm.uuid):
            if time.monotonic() > deadline:
                raise AssertionError(f"QEMU for {vm.uuid} never watched vms/{vm.uuid}")
            time.sleep(0.05)
    except BaseException:
        idle.kill()
        raise
    return idle


def remove_disk(storage: RBDStorage, vm: VM, timeout: float = 45.0) -> None:
    """Remove the VM's disk, waiting while Ceph says it is busy: a QEMU that died without closing it
    leaves a watch behind until the OSD times it out (osd_client_watch_timeout, 30 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            storage.delete(vm)
            return
        except StorageError as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextmanager
def idle_qemus(ceph: Ceph, run_dir: Path, uuids: list[str]) -> Iterator[list[IdleQEMU]]:
    """Idle QEMUs, one per uuid, each on its own fresh clone of `images/tiny` in pool `vms`; all
    killed and their disks removed at the end, whatever happens."""
    storage = RBDStorage(ceph, "images", "vms")
    with ExitStack() as stack:
        started: list[IdleQEMU] = []
        for uuid in uuids:
            vm = a_vm(uuid)
            remove_disk(storage, vm)  # a fresh clone: a leftover of an earlier run may hold our pattern
            stack.callback(remove_disk, storage, vm)
            started.append(start_idle_qemu(ceph, storage, vm, run_dir))
            stack.callback(started[-1].kill)
        yield started
