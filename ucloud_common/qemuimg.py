"""Running qemu-img: always with an explicit format (the caller passes `-f`), and, for untrusted
files, under address-space and CPU limits, so that a crafted image cannot make it eat the host."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ucloud_common.quoting import printable


class QemuImgError(Exception):
    """qemu-img failed or ran past its time; `str()` says which (its own last line of explanation)."""


@dataclass(frozen=True)
class Limits:
    memory_mib: int
    cpu_seconds: int


def qemu_img(*args: str, limits: Limits | None = None, timeout: float = 600) -> str:
    # The limits are set by util-linux's prlimit, not a preexec_fn: a preexec_fn forces a plain
    # fork() in a process whose gRPC (the etcd client) runs fork handlers that restart its poller in
    # the child, which then wrote an epoll error into qemu-img's stderr and failed it (seen in CI).
    command = ["qemu-img", *args]
    if limits:
        command = ["prlimit", f"--as={limits.memory_mib * 1024 * 1024}",
                   f"--cpu={limits.cpu_seconds}", "--", *command]
    wall = limits.cpu_seconds * 2 if limits else timeout
    # One malloc arena: glibc reserves 64 MiB of address space per arena, one per thread, and the
    # address-space limit counts reservations. Converting a compressed qcow2 (qemu-img 7.2, a thread
    # pool) failed 1 to 4 times in 10 under 500-900 MiB, and now and then under load at 1024 MiB
    # ("qemu_thread_create: Resource temporarily unavailable"); with one arena, 0 in 10 at 300 MiB.
    environment = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=wall, env=environment)
    except subprocess.TimeoutExpired:  # run() has killed it; a hung qemu-img is a failed one
        raise QemuImgError(f"qemu-img {args[0]} did not finish within {wall:.0f} s") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        # Its complaint may repeat text of the file it read (a name in a header): one printable line.
        why = printable(lines[-1]) if lines else f"exit {result.returncode}"
        raise QemuImgError(f"qemu-img {args[0]} failed: {why}")
    return result.stdout
