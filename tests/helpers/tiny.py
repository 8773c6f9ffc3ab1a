"""The tiny bootable test image, built once per machine by deploy/build-tiny-image.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/tmp/ucloud-test-tiny")
BOOTED = "ucloud-tiny: booted"


def tiny_image() -> Path:
    subprocess.run(["bash", str(REPO / "deploy" / "build-tiny-image.sh"), str(CACHE)], check=True,
                   capture_output=True)
    return CACHE
