"""The tiny bootable test image, built once per machine by deploy/build-tiny-image.sh."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "build-tiny-image.sh"
BOOTED = "ucloud-tiny: booted"


def cache_dir() -> Path:
    """One directory per version of the build script: worktrees (and branches) with different
    scripts share a machine without rebuilding over each other's image while a test boots it."""
    return Path("/var/tmp") / f"ucloud-test-tiny-{hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]}"


def tiny_image() -> Path:
    cache = cache_dir()
    subprocess.run(["bash", str(SCRIPT), str(cache)], check=True, capture_output=True)
    return cache
