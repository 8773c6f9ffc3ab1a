"""File-scan: register the files users uploaded (`<upload_dir>/<user>/…`) in `/v1/file/`.

Only the folders of users that exist (and are not being deleted) are looked at, and an upload the
API is still receiving (`ucloud_common.uploads.TEMPORARY_PREFIX`) is left alone.

Users control everything in their folder, so the walk trusts nothing: it never follows a symlink,
never opens anything but a regular file (a FIFO would block it, a device would be read), skips names
with control characters, and never reads a file still being written: it looks at the tree twice,
`filescan_settle` seconds apart, and only hashes files whose size and mtime did not change, then
checks (by fstat on the open file) that what it hashed is what it looked at.

Idempotent: a file whose size and mtime are as registered is not read again, and a run over an
unchanged tree writes nothing.

One user's folder never stops or starves the others' (`Limits`): the walk keeps its own stack (a tree
1,100 folders deep made `os.walk` raise RecursionError and ended every run), goes at most
`filescan_max_depth` folders deep and looks at `filescan_max_entries` entries per user; whatever
fails is skipped for that entry alone. A file that could never become an image
(`diskformat.size_refusal`: too large, by its size or its qcow2 header) is registered unread, with
the reason (an 8 GiB sparse file took 55 s to hash before image-scanner refused it), and each
user's files are read in turns, smallest first, up to `filescan_user_share` GiB per user and run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, zip_longest
from pathlib import Path

from ucloud_common.config import Settings
from ucloud_common.contentdigest import ZEROS, digest_reading
from ucloud_common.diskformat import size_refusal
from ucloud_common.file import FILES, File
from ucloud_common.quota import change, transact_counted
from ucloud_common.quoting import quote
from ucloud_common.record import check_name
from ucloud_common.store import Put, Remove, Store, Versioned
from ucloud_common.uploads import is_temporary
from ucloud_common.user import USERS

log = logging.getLogger(__name__)

_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class Limits:
    """How much of one user's folder one run looks at and reads (the settings of the same names)."""

    image_max_size: int = _DEFAULTS["image_max_size"].default  # GiB
    max_depth: int = _DEFAULTS["filescan_max_depth"].default
    max_entries: int = _DEFAULTS["filescan_max_entries"].default
    user_share: int = _DEFAULTS["filescan_user_share"].default  # GiB

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.image_max_size, settings.filescan_max_depth, settings.filescan_max_entries,
                   settings.filescan_user_share)


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
    too_large: int = 0

    def figures(self) -> dict[str, float]:
        return {f"files_{name}": count for name, count in vars(self).items()}

    def sentence(self) -> str:
        return (f"{self.registered} registered, {self.updated} updated, {self.removed} removed, "
                f"{self.unchanged} unchanged, {self.skipped} skipped, {self.too_large} too large")


@dataclass
class Tree:
    """What one look at the upload tree saw: files by (owner, relative name), and the owners whose
    folder was not seen whole (an entry limit, a folder that could not be read): their registered
    files that were not seen may still be there, and are not removed."""

    files: dict[tuple[str, str], Seen] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)


def look(upload_dir: Path, limits: Limits, users: frozenset[str]) -> Tree:
    """Every regular file under the folder of each of `users`, within `limits`; nothing is opened.
    A folder of no user (a deleted one's, one made by hand for a name no user has) is skipped: its
    files would be owned by whoever is later created with that name."""
    tree = Tree()
    try:
        folders = sorted(os.scandir(upload_dir), key=lambda e: e.name)
    except FileNotFoundError:
        log.warning("upload directory %s does not exist", upload_dir)
        return tree
    for user in folders:
        try:
            check_name(user.name)
        except ValueError:
            log.warning("skipping %s: not a user name", quote(user.path))
            continue
        if user.name not in users:
            log.warning("skipping %s: no user is named %s (or it is being deleted)", quote(user.path), user.name)
            continue
        if not user.is_dir(follow_symlinks=False):
            log.warning("skipping %s: not a directory", quote(user.path))
            continue
        try:
            for item in _walk(user.name, Path(user.path), limits, tree):
                tree.files[(item.owner, item.filename)] = item
        except Exception:  # one user's folder never ends the run for the others
            log.exception("skipping the rest of %s's folder: looking at it failed", user.name)
            tree.partial.add(user.name)
    return tree


def _walk(owner: str, root: Path, limits: Limits, tree: Tree) -> Iterator[Seen]:
    """The regular files under `root`, depth first from a stack of its own (no recursion), at most
    `limits.max_depth` folders deep and `limits.max_entries` entries in all."""
    pending = [(root, 0)]
    entries = 0
    while pending:
        directory, depth = pending.pop()
        try:
            listing = os.scandir(directory)
        except OSError as exc:
            log.warning("skipping folder %s of %s: %s", quote(str(directory.relative_to(root))), owner, exc.strerror)
            tree.partial.add(owner)
            continue
        with listing:
            for entry in listing:
                entries += 1
                if entries > limits.max_entries:
                    log.warning("skipping the rest of %s's folder: more than %d entries", owner, limits.max_entries)
                    tree.partial.add(owner)
                    return
                path = Path(entry.path)
                relative = str(path.relative_to(root))
                if is_temporary(entry.name):
                    log.info("skipping %s of %s: an upload still being received", quote(relative), owner)
                    continue
                if not relative.isprintable():
                    log.warning("skipping %s of %s: control characters in its name", quote(relative), owner)
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:  # gone since the listing
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if depth + 1 < limits.max_depth:
                        pending.append((path, depth + 1))
                    else:
                        log.warning("skipping folder %s of %s: deeper than %d folders", quote(relative), owner,
                                    limits.max_depth)
                elif stat.S_ISLNK(info.st_mode):
                    log.info("skipping %s of %s: a symlink (never followed)", quote(relative), owner)
                elif not stat.S_ISREG(info.st_mode):
                    log.info("skipping %s of %s: not a regular file", quote(relative), owner)
                else:
                    yield Seen(owner, relative, path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class TooLarge(Exception):
    """The file can never become an image; `str()` says why."""


def hashes_of(item: Seen, max_size: int) -> tuple[str, str] | None:
    """The file's sha512 and content digest (ucloud_common/contentdigest.py, hashed on the other
    cores meanwhile) if it is still the regular file that was seen, unchanged while read; None if it
    is not. Raises TooLarge, before reading it through, if it could never be an image of at
    most `max_size` bytes."""
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.info("skipping %s of %s: %s", quote(item.filename), item.owner, exc.strerror)
        return None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != (
                item.device, item.inode, item.size, item.mtime_ns):
            log.info("skipping %s of %s: it changed since it was looked at", quote(item.filename), item.owner)
            return None
        if why := size_refusal(os.pread(fd, 32, 0), before.st_size, max_size):
            raise TooLarge(why)
        sha512 = hashlib.sha512()
        digest = digest_reading(fd, lambda chunk: sha512.update(ZEROS if chunk is None else chunk))
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (item.size, item.mtime_ns):
        log.info("skipping %s of %s: it was written to while being read", quote(item.filename), item.owner)
        return None
    return sha512.hexdigest(), digest


def in_turns(items: list[Seen], share: int) -> Iterator[Seen]:
    """`items` to read, one user's after another's in turns, each user's smallest first; a user's
    turns end once `share` bytes of theirs were given (the file that crosses it included), so
    that one user's many or large uploads hold up the others' by at most one file each turn."""
    by_owner: dict[str, list[Seen]] = {}
    for item in sorted(items, key=lambda i: (i.size, i.filename)):
        by_owner.setdefault(item.owner, []).append(item)
    given: dict[str, int] = dict.fromkeys(by_owner, 0)
    left: dict[str, int] = {owner: len(files) for owner, files in by_owner.items()}
    for item in chain.from_iterable(zip_longest(*by_owner.values())):
        if item is None:
            continue
        left[item.owner] -= 1
        if given[item.owner] >= share:
            if left[item.owner] == 0:
                log.info("%s's files past %g GiB are left for the next run", item.owner, share / 2**30)
            continue
        given[item.owner] += item.size
        yield item


def scan(store: Store, upload_dir: Path, settle: float, limits: Limits = Limits()) -> Report:
    report = Report()
    users = frozenset(u.name for u in store.list(USERS).items.values() if not u.value.deleting)
    first = look(upload_dir, limits, users)
    if settle:
        time.sleep(settle)
    second = look(upload_dir, limits, users)
    registered: dict[tuple[str, str], Versioned[File]] = {
        (f.value.owner, f.value.filename): f for f in store.list(FILES).items.values()}
    to_read = []
    for key, item in second.files.items():
        earlier = first.files.get(key)
        if earlier is None or (earlier.size, earlier.mtime_ns, earlier.inode) != (item.size, item.mtime_ns, item.inode):
            log.info("skipping %s of %s: still being written (it changed during the scan)", quote(item.filename),
                     item.owner)
            report.skipped += 1
            continue
        known = registered.get(key)
        if known is not None and known.value.size == item.size and known.value.mtime == _mtime(item):
            report.unchanged += 1
            continue
        to_read.append(item)
    read = list(in_turns(to_read, limits.user_share * 2**30))
    report.skipped += len(to_read) - len(read)
    for item in read:
        refused = ""
        try:
            hashes = hashes_of(item, limits.image_max_size * 2**30)
        except TooLarge as exc:  # registered unread, with the reason: its owner sees why it is no image
            log.info("%s of %s is not read: %s", quote(item.filename), item.owner, exc)
            report.too_large += 1
            hashes, refused = ("", ""), str(exc)
        if hashes is None:
            report.skipped += 1
            continue
        sha512, digest = hashes
        mtime = _mtime(item)
        known = registered.get((item.owner, item.filename))
        if known is None:
            uuid = str(uuidlib.uuid4())
            _write(store, None, File(uuid=uuid, owner=item.owner, filename=item.filename, size=item.size,
                                     sha512=sha512, digest=digest, mtime=mtime, refused=refused))
            log.info("registered %s of %s as %s (%d bytes)", quote(item.filename), item.owner, uuid, item.size)
            report.registered += 1
        else:
            _write(store, known, known.value.evolve(size=item.size, sha512=sha512, digest=digest, mtime=mtime,
                                                    refused=refused))
            log.info("updated %s of %s (%s): it changed", quote(item.filename), item.owner, known.name)
            report.updated += 1
    for key, known in registered.items():
        if key not in first.files and key not in second.files and known.value.owner not in (
                first.partial | second.partial):
            _write(store, known, None)
            log.info("removed %s of %s (%s): the file is gone", quote(known.value.filename), known.value.owner,
                     known.name)
            report.removed += 1
    return report


def _write(store: Store, known: Versioned[File] | None, new: File | None) -> None:
    """Register `new` where `known` was (None: a new file; a file gone), with the change of its owner's
    usage in the same transaction. Counted, never refused: the file is on the disk already; the upload
    endpoint is what keeps a user within their quota upload_bytes. Conflict if `known` changed meanwhile."""
    before = known.value if known else None
    record = new or before
    assert record is not None
    name = record.uuid
    expect = known.mod_revision if known else 0
    write: Put[File] | Remove[File] = Put(FILES, name, new, expect) if new else Remove(FILES, name, expect)
    transact_counted(store, record.owner, lambda: ([write], change(before, new)), enforce=False)


def _mtime(item: Seen) -> datetime:
    return datetime.fromtimestamp(item.mtime_ns / 1e9, UTC)
