"""QEMU: the command line (built here and nowhere else), the process, and QMP.

Each VM is one QEMU process that daemonizes (`-daemonize`, `-pidfile`), so it outlives the agent:
a restarted agent finds it again by its pid file and QMP socket. `-no-shutdown` keeps QEMU alive
when the guest powers off, so the agent can tell a guest's own power-off (QEMU still there, status
"shutdown") from a crash (QEMU gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from ucloud_common.vm import VM
from ucloud_vm.paths import VMPaths

log = logging.getLogger(__name__)

QMP_TIMEOUT_S = 5.0


class QEMUError(Exception):
    """QEMU could not be started or did not answer; `str()` says why, for the VM's `error`."""


def command_line(vm: VM, disk: list[str], paths: VMPaths, accel: str, binary: str = "qemu-system-x86_64",
                 paused: bool = False) -> list[str]:
    """The whole QEMU command line for `vm`; `disk` is the drive's `-drive` options (with format=);
    `paused`: the CPUs stay stopped until QMP `cont` (-S)."""
    ram_mib = max(64, int(vm.specs.ram * 1024))
    argv = [
        binary, "-name", f"guest={vm.uuid},process=ucloud-{vm.uuid[:8]}",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown",
        "-accel", accel, "-smp", str(vm.specs.cpu), "-m", str(ram_mib),
        "-daemonize", "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-chardev", f"file,id=serial0,path={paths.serial},append=on", "-serial", "chardev:serial0",
        "-vnc", f"unix:{paths.vnc}", "-device", "VGA",
        # A guest kernel that panics tells QEMU through pvpanic; QEMU then pauses in the run state
        # "guest-panicked", which the agent reports and handles as a crash, rather than leaving a
        # dead guest spinning at 100% CPU while its VM shows RUNNING.
        "-device", "pvpanic", "-action", "panic=pause",
        "-drive", ",".join([*disk, "if=virtio", "id=disk0"]),
    ]
    if paused:
        argv.append("-S")
    if accel == "kvm":
        argv += ["-cpu", "host"]
    return argv


def start(argv: list[str], paths: VMPaths) -> int:
    """Start QEMU; return its pid once it has daemonized. Raises QEMUError with QEMU's own words."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.pidfile.unlink(missing_ok=True)
    with open(paths.qemu_log, "ab") as stderr:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                timeout=60, start_new_session=True)
        stderr.write(result.stderr)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise QEMUError(f"QEMU failed to start: {message[-1] if message else f'exit {result.returncode}'}")
    pid = read_pid(paths)
    if pid is None:
        raise QEMUError("QEMU started but wrote no pid file")
    return pid


def read_pid(paths: VMPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Whether the process runs (a zombie does not: nobody may reap an orphaned QEMU here)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def running_qemu(paths: VMPaths) -> int | None:
    """The pid of this VM's QEMU if it runs (and is QEMU, not a recycled pid), else None."""
    pid = read_pid(paths)
    if not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    return pid if str(paths.pidfile).encode() in cmdline else None


def execute(paths: VMPaths, command: str, timeout: float = QMP_TIMEOUT_S, **arguments: Any) -> Any:
    """Run one QMP command on a fresh connection; QEMUError if QEMU does not answer in `timeout`.

    Connecting is bounded too (the sync wrapper's `connect` waits for the greeting for ever): a QEMU
    whose main loop is stuck — e.g. in a disk request to a Ceph that has blocklisted it — accepts
    the connection but never greets, and must cost a worker seconds, not its life."""

    async def run() -> Any:
        client = QMPClient(f"ucloud-{paths.root.name[:8]}")
        await asyncio.wait_for(client.connect(str(paths.qmp)), timeout)
        try:
            return await asyncio.wait_for(client.execute(command, arguments or None), timeout)
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout)
            except (OSError, QMPError, EOFError, asyncio.TimeoutError):
                pass  # after `quit` the socket is already gone

    try:
        return asyncio.run(run())
    except (OSError, QMPError, asyncio.TimeoutError, EOFError) as exc:
        raise QEMUError(f"QMP {command} at {paths.qmp} failed: {exc or type(exc).__name__}") from None


def status(paths: VMPaths) -> str:
    """QEMU's run state: "running", "paused", "shutdown" (the guest powered off), …"""
    return str(execute(paths, "query-status")["status"])


def kill(paths: VMPaths) -> None:
    """Stop QEMU now: `quit` over QMP, SIGKILL if it does not answer."""
    pid = running_qemu(paths)
    if pid is None:
        return
    try:
        execute(paths, "quit")
    except QEMUError:
        pass
    for _ in range(50):
        if not alive(pid):
            return
        time.sleep(0.05)
    log.warning("QEMU pid %d ignored quit; killing it", pid)
    os.kill(pid, 9)
