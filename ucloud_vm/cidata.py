"""A VM's NoCloud cloud-init drive: a small vfat volume labelled CIDATA, which any stock cloud-init
image finds without configuration, carrying the files of `ucloud_common.cidata.seed_files`.

The contract with the agent: it rebuilds the drive at every start of the VM's QEMU, from the record
as it is then, and attaches it read-only (`drive_options`).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ucloud_common.cidata import SeedError
from ucloud_common.errors import TemporaryError

LABEL = "CIDATA"
# The image is the content twice over plus 1 MiB for the FAT and directory (each file takes at least
# one cluster), rounded up to whole MiB; with the 64 KiB user-data limit that is at most 2 MiB.
MIB = 1024 * 1024
# Fixed timestamps (mkfs.vfat --invariant, mcopy -m from sources dated here) make the same files give
# the same image byte for byte, so a rebuild with unchanged content changes nothing at all.
FILE_MTIME = 1577836800  # 2020-01-01T00:00:00Z (FAT cannot date anything before 1980)
TOOL_TIMEOUT_S = 60

_FILE_NAME = re.compile(r"[a-z][a-z0-9-]*")


def build_seed(path: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` into a vfat image labelled CIDATA at `path`, replacing any drive there at once:
    the image is built in a scratch directory beside `path` and renamed into place only when
    complete, so `path` is always either the old drive or the new one, and a failure leaves nothing
    else behind. The same files always give the same bytes. Raises SeedError (a tool failed or is
    missing), TemporaryError (a tool hung) or OSError (e.g. the disk is full)."""
    if not all(_FILE_NAME.fullmatch(name) for name in files):
        raise ValueError(f"seed file names must be plain lowercase names: {sorted(files)}")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        image = Path(scratch) / "seed.img"
        sources = Path(scratch) / "files"
        sources.mkdir()
        for name, data in files.items():
            (sources / name).write_bytes(data)
            os.utime(sources / name, (FILE_MTIME, FILE_MTIME))
        content = sum(len(data) for data in files.values())
        with open(image, "wb") as f:
            f.truncate((2 * content + 2 * MIB - 1) // MIB * MIB)
        _run(["mkfs.vfat", "--invariant", "-n", LABEL, str(image)])
        _run(["mcopy", "-m", "-i", str(image), *(str(sources / name) for name in sorted(files)), "::/"])
        os.replace(image, path)


def drive_options(path: Path) -> list[str]:
    """The `-drive` options that attach the seed at `path`: read-only, so the guest cannot change what
    it is told at its next boot (the agent rebuilds the drive then anyway)."""
    # QEMU's option syntax ends a value at a comma; a doubled comma is a literal one.
    return [f"file={str(path).replace(',', ',,')}", "format=raw", "if=virtio", "readonly=on", "id=cidata"]


def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TOOL_TIMEOUT_S,
                                check=False)
    except FileNotFoundError:
        raise SeedError(f"cannot build the cloud-init drive: {argv[0]} is not installed on this host "
                        "(Debian packages dosfstools and mtools)") from None
    except subprocess.TimeoutExpired:
        raise TemporaryError(f"building the cloud-init drive: {argv[0]} did not finish in {TOOL_TIMEOUT_S} s") from None
    if result.returncode != 0:
        words = result.stderr.decode(errors="replace").strip().splitlines()
        raise SeedError(f"cannot build the cloud-init drive: {argv[0]} failed: "
                        f"{words[-1] if words else f'exit {result.returncode}'}")
