"""File-scan: register the files users uploaded (`<upload_dir>/<user>/…`) in `/v1/file/`.

Users control everything in their folder, so the walk trusts nothing: it never follows a symlink,
never opens anything but a regular file (a FIFO would block it, a device would be read), skips names
with control characters, and never reads a file still being written: it looks at the tree twice,
`filescan_settle` seconds apart, and only hashes files whose size and mtime did not change, then
checks (by fstat on the open file) that what it hashed is what it looked at.

Idempotent: a file whose size and mtime are as registered is not read again, and a run over an
unchanged tree writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ucloud_common.file import FILES, File
from ucloud_common.record import check_name
from ucloud_common.store import Store, Versioned

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Seen:
    owner: str
    filename: str  # relative to the owner's folder
    path: Path
    device: int
    inode: int
    size: int
    mtime_ns: int


@dataclass
class Report:
    registered: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0

    def sentence(self) -> str:
        return (f"{self.registered} registered, {self.updated} updated, {self.removed} removed, "
                f"{self.unchanged} unchanged, {self.skipped} skipped")


def _printable(name: str) -> bool:
    return name.isprintable()


def look(upload_dir: Path) -> dict[tuple[str, str], Seen]:
    """Every regular file under every user's folder, by (owner, relative name); nothing is opened."""
    seen: dict[tuple[str, str], Seen] = {}
    try:
        users = sorted(os.scandir(upload_dir), key=lambda e: e.name)
    except FileNotFoundError:
        log.warning("upload directory %s does not exist", upload_dir)
        return seen
    for user in users:
        try:
            check_name(user.name)
        except ValueError:
            log.warning("skipping %s: not a user name", user.path)
            continue
        if not user.is_dir(follow_symlinks=False):
            log.warning("skipping %s: not a directory", user.path)
            continue
        for directory, subdirs, files in os.walk(user.path, followlinks=False):
            for name in [d for d in subdirs if not _printable(d)]:
                log.warning("skipping %r: control characters in its name", os.path.join(directory, name))
                subdirs.remove(name)
            for name in files:
                path = Path(directory) / name
                relative = str(path.relative_to(user.path))
                if not _printable(relative):
                    log.warning("skipping %r: control characters in its name", str(path))
                    continue
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    log.info("skipping %s: a symlink (never followed)", path)
                    continue
                if not stat.S_ISREG(info.st_mode):
                    log.info("skipping %s: not a regular file", path)
                    continue
                seen[(user.name, relative)] = Seen(user.name, relative, path, info.st_dev, info.st_ino,
                                                   info.st_size, info.st_mtime_ns)
    return seen


def sha512_of(item: Seen) -> str | None:
    """The file's sha512 if it is still the regular file that was seen, unchanged while read."""
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.info("skipping %s: %s", item.path, exc)
        return None
    with os.fdopen(fd, "rb") as file:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != (
                item.device, item.inode, item.size, item.mtime_ns):
            log.info("skipping %s: it changed since it was looked at", item.path)
            return None
        digest = hashlib.sha512()
        while chunk := file.read(CHUNK):
            digest.update(chunk)
        after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns) != (item.size, item.mtime_ns):
        log.info("skipping %s: it was written to while being read", item.path)
        return None
    return digest.hexdigest()


def scan(store: Store, upload_dir: Path, settle: float) -> Report:
    report = Report()
    first = look(upload_dir)
    if settle:
        time.sleep(settle)
    second = look(upload_dir)
    registered: dict[tuple[str, str], Versioned[File]] = {
        (f.value.owner, f.value.filename): f for f in store.list(FILES).items.values()}
    for key, item in second.items():
        earlier = first.get(key)
        if earlier is None or (earlier.size, earlier.mtime_ns, earlier.inode) != (item.size, item.mtime_ns, item.inode):
            log.info("skipping %s: still being written (it changed during the scan)", item.path)
            report.skipped += 1
            continue
        mtime = datetime.fromtimestamp(item.mtime_ns / 1e9, UTC)
        known = registered.get(key)
        if known is not None and known.value.size == item.size and known.value.mtime == mtime:
            report.unchanged += 1
            continue
        digest = sha512_of(item)
        if digest is None:
            report.skipped += 1
            continue
        if known is None:
            uuid = str(uuidlib.uuid4())
            store.create(FILES, uuid, File(uuid=uuid, owner=item.owner, filename=item.filename, size=item.size,
                                           sha512=digest, mtime=mtime))
            log.info("registered %s of %s as %s (%d bytes)", item.filename, item.owner, uuid, item.size)
            report.registered += 1
        else:
            store.replace(FILES, known.name, known.value.evolve(size=item.size, sha512=digest, mtime=mtime),
                          known.mod_revision)
            log.info("updated %s of %s (%s): it changed", item.filename, item.owner, known.name)
            report.updated += 1
    for key, known in registered.items():
        if key not in first and key not in second:
            store.delete(FILES, known.name, mod_revision=known.mod_revision)
            log.info("removed %s of %s (%s): the file is gone", known.value.filename, known.value.owner, known.name)
            report.removed += 1
    return report
