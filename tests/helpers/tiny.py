"""The test images, each built once per machine by its script in deploy/: the tiny bootable image
(deploy/build-tiny-image.sh) and the real Debian 12 guest (deploy/build-debian-image.sh)."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "build-tiny-image.sh"
DEBIAN_SCRIPT = REPO / "deploy" / "build-debian-image.sh"
BOOTED = "ucloud-tiny: booted"


def cache_dir(script: Path = SCRIPT) -> Path:
    """One directory per version of a build script: worktrees (and branches) with different
    scripts share a machine without rebuilding over each other's image while a test boots it."""
    name = script.name.removeprefix("build-").removesuffix("-image.sh")
    return Path("/var/tmp") / f"ucloud-test-{name}-{hashlib.sha256(script.read_bytes()).hexdigest()[:12]}"


def _built(script: Path, timeout: float | None = None) -> Path:
    cache = cache_dir(script)
    # One build at a time on this machine: pytest's two workers (and other checkouts) asking at once would
    # otherwise both build, and the second one's copy into the cache would rewrite the image under a QEMU
    # the first one's test already booted from it. The waiter then finds it built and returns at once.
    with open(cache.with_name(cache.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["bash", str(script), str(cache)], check=True, capture_output=True, timeout=timeout)
    return cache


def tiny_image() -> Path:
    return _built(SCRIPT)


def debian_image() -> Path:
    """The directory holding debian.qcow2. The first build downloads ≈ 150 MiB of packages and
    takes a minute or two; later calls return at once."""
    return _built(DEBIAN_SCRIPT, timeout=1200)
