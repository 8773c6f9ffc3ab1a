"""One run at a time for the periodic jobs (cron or a systemd timer may start a run while the last
one is still going): an exclusive, non-blocking `flock` that the kernel releases if the run dies."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AlreadyRunning(Exception):
    pass


@contextmanager
def single_run(lock_dir: Path, name: str) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another {name} run holds {lock_dir / (name + '.lock')}") from None
        yield
    finally:
        os.close(fd)
