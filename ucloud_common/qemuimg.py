"""Running qemu-img: always with an explicit format (the caller passes `-f`), and, for untrusted
files, under address-space and CPU limits, so that a crafted image cannot make it eat the host."""

from __future__ import annotations

import resource
import subprocess
from dataclasses import dataclass


class QemuImgError(Exception):
    """qemu-img failed; `str()` is its own last line of explanation."""


@dataclass(frozen=True)
class Limits:
    memory_mib: int
    cpu_seconds: int


def qemu_img(*args: str, limits: Limits | None = None, timeout: float = 600) -> str:
    def apply_limits() -> None:
        assert limits is not None
        memory = limits.memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))

    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                            preexec_fn=apply_limits if limits else None,
                            timeout=limits.cpu_seconds * 2 if limits else timeout)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise QemuImgError(f"qemu-img {args[0]} failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout
