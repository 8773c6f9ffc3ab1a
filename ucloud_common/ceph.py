"""Ceph RBD, shared by the agent (VM disks), the scheduler (fencing) and image-scanner (image stores).

An image in an RBD store is `<pool>/<image uuid>` with a protected snapshot `base`; a VM disk is
`<vm pool>/<vm uuid>`, a copy-on-write clone of that snapshot, with the exclusive-lock feature, so
only one QEMU at a time writes it; a VM's HDD disk is an empty image with the same feature in the HDD
pool (ucloud_common.vmdisks names them).

Fencing needs more than that lock: librbd takes it lazily, at a client's first write, and hands it
over when another client asks, so a QEMU whose guest has not written yet has the disk open without
holding any lock. What every client with the image open does have is a watch on the image header
(`image_clients`); fencing blocklists those clients' addresses (`blocklist_add`), which makes every
OSD refuse them once it has the new OSD map, then breaks their lock (`break_lock`).

The bindings (`rados`, `rbd`) are Debian's and imported only when Ceph is configured; this is the
only module that imports them.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucloud_common.errors import TEMPORARY_ERRNOS, TemporaryError

log = logging.getLogger(__name__)

SNAPSHOT = "base"
# How long a fenced client stays blocklisted. Ceph's default is an hour (mon_osd_blocklist_default_
# expire): a QEMU on a host cut off for longer, which never saw the entry, could write again when it
# returned. The entry of a client instance (ip:port/nonce) names no other, so keeping it long is cheap.
BLOCKLIST_EXPIRE_S = 30 * 24 * 3600.0
GIB = 1024**3


class CephError(Exception):
    """An RBD operation failed; `str()` says which and why."""


class CephUnavailable(CephError, TemporaryError):
    """Ceph did not answer in time, the connection broke, or the cluster is full: the same operation
    may succeed later, so a caller retries rather than marking its object ERROR."""


# What librados and librbd report when the cluster, not the request, is the problem.
UNAVAILABLE_ERRNOS = frozenset({errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN, errno.ECONNREFUSED,
                                errno.ECONNRESET, errno.EAGAIN, errno.EINTR}) | TEMPORARY_ERRNOS


@dataclass(frozen=True)
class Locker:
    """One holder of an image's lock as the image header records it (a librbd client's managed
    exclusive lock, or an advisory lock): enough to blocklist it and to break its hold."""

    client: str  # the client's name, e.g. "client.4154"
    cookie: str  # which of that client's holds, e.g. "auto 140097404157392"
    address: str  # the client instance, "ip:port/nonce"


@dataclass(frozen=True)
class ImageClients:
    """The clients that had an image open at one moment, ucloud's own client excluded.

    `watchers` are the addresses watching the image header: every librbd client with the image open
    read-write watches it, whether or not it has written. A client that has not talked to the OSD for
    osd_client_watch_timeout (30 s; measured: a SIGSTOPped QEMU's watch vanished after 29.9 s and came
    back the moment it resumed) is missing from them, and can be found only if it holds the lock:
    `lockers` are the lock's holders, watching or not.
    """

    watchers: frozenset[str]
    lockers: tuple[Locker, ...]

    @property
    def addresses(self) -> frozenset[str]:
        """Every client instance to blocklist to stop all of these clients."""
        return self.watchers | {locker.address for locker in self.lockers}


class Ceph:
    def __init__(self, conf: Path, client: str = "admin", timeout: float = 10.0) -> None:
        import rados

        self.conf = conf
        self._cluster = rados.Rados(conffile=str(conf), name=f"client.{client}")
        self._cluster.conf_set("rados_osd_op_timeout", str(int(timeout)))
        self._cluster.conf_set("rados_mon_op_timeout", str(int(timeout)))
        try:
            self._cluster.connect(timeout=int(timeout))
        except rados.Error as exc:
            raise _failed(f"cannot connect to Ceph ({conf})", exc) from None

    def close(self) -> None:
        self._cluster.shutdown()

    @contextmanager
    def pool(self, name: str) -> Iterator[Any]:
        import rados

        try:
            ioctx = self._cluster.open_ioctx(name)
        except rados.Error as exc:
            raise _failed(f"cannot open pool {name}", exc) from None
        try:
            yield ioctx
        finally:
            ioctx.close()

    # -- VM disks ---------------------------------------------------------------------------------

    def clone_disk(self, image_pool: str, image: str, vm_pool: str, disk: str, size_gib: int) -> None:
        """Clone `image_pool/image@base` to `vm_pool/disk` (kept if it exists) and grow it to size_gib."""
        import rbd

        with self.pool(image_pool) as parent, self.pool(vm_pool) as child:
            try:
                rbd.RBD().clone(parent, image, SNAPSHOT, child, disk,
                                features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK)
            except rbd.ImageExists:
                pass
            except rbd.ImageNotFound:
                raise CephError(f"image {image} is not in pool {image_pool}") from None
            except rbd.Error as exc:
                raise _failed(f"cannot clone {image_pool}/{image}@{SNAPSHOT}", exc) from None
            _grow(child, vm_pool, disk, size_gib)

    def empty_disk(self, pool: str, disk: str, size_gib: int) -> None:
        """Make `pool/disk` an empty image of size_gib (kept if it exists, grown if smaller), with the
        exclusive-lock feature as every VM disk has, so a fence treats it like the system disk."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                rbd.RBD().create(ioctx, disk, size_gib * GIB,
                                 features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK)
            except rbd.ImageExists:
                pass
            except rbd.Error as exc:
                raise _failed(f"cannot create {pool}/{disk}", exc) from None
            _grow(ioctx, pool, disk, size_gib)

    def exists(self, pool: str, name: str) -> bool:
        import rbd

        with self.pool(pool) as ioctx:
            return name in rbd.RBD().list(ioctx)

    def remove(self, pool: str, name: str) -> None:
        """Remove an image (absent is fine)."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass
            except rbd.ImageBusy as exc:
                # Still open: a client that died without closing it (a QEMU killed with -9) keeps
                # its watch until the OSDs time it out (30 s), so trying again soon succeeds.
                raise CephUnavailable(f"cannot remove {pool}/{name} yet: {exc}", 5.0) from None
            except rbd.Error as exc:
                raise _failed(f"cannot remove {pool}/{name}", exc) from None

    # -- fencing ----------------------------------------------------------------------------------

    def own_addresses(self) -> frozenset[str]:
        """This client's own addresses. A fence must never blocklist them: ucloud would be cut off from
        Ceph for as long as the blocklist entry lasts. Raises CephError."""
        import rados

        try:
            return frozenset(_addresses(str(self._cluster.get_addrs())))
        except rados.Error as exc:
            raise _failed("cannot read this client's own addresses", exc) from None

    def image_clients(self, pool: str, name: str) -> ImageClients | None:
        """Who has `pool/name` open now (see `ImageClients`), our own client excluded; None if the image
        does not exist. Opens the image read-only, which adds no watch of our own (measured on 16.2.15;
        a read-write open would add one) and never takes the lock. Raises CephError."""
        import rbd

        own = self.own_addresses()
        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:
                    watchers = {_address(str(w["addr"])) for w in image.watchers_list()}
                    # list_lockers, not lock_get_owners: the latter refuses a read-only image (EINVAL).
                    info = image.list_lockers()
            except rbd.ImageNotFound:
                return None
            except rbd.Error as exc:
                raise _failed(f"cannot list the clients of {pool}/{name}", exc) from None
        lockers = tuple(Locker(str(client), str(cookie), _address(str(address)))
                        for client, cookie, address in (info["lockers"] if info else []))
        return ImageClients(watchers=frozenset(watchers - own),
                            lockers=tuple(locker for locker in lockers if locker.address not in own))

    def watchers(self, pool: str, name: str) -> frozenset[str] | None:
        """The addresses watching `pool/name` now, as the OSD holding its header knows them (a live
        query, not a cached view); None if the image does not exist. Raises CephError."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:
                    return frozenset(_address(str(w["addr"])) for w in image.watchers_list())
            except rbd.ImageNotFound:
                return None
            except rbd.Error as exc:
                raise _failed(f"cannot list the watchers of {pool}/{name}", exc) from None

    def blocklist_add(self, address: str) -> None:
        """Blocklist one client instance (`ip:port/nonce`) for BLOCKLIST_EXPIRE_S. Once an OSD has
        the OSD map with the entry, it refuses that client's operations and drops its watches. Adding
        an address already listed is fine (it only renews the entry). Raises CephError, refusing our
        own addresses."""
        if _address(address) in self.own_addresses():
            raise CephError(f"refusing to blocklist {address}: it is ucloud's own Ceph client")
        self._mon_command({"prefix": "osd blocklist", "blocklistop": "add", "addr": address,
                           "expire": BLOCKLIST_EXPIRE_S}, f"cannot blocklist {address}")

    def blocklisted(self) -> frozenset[str]:
        """The client instances and whole addresses (`ip:0/0`) in the OSD blocklist now. Raises CephError."""
        out = self._mon_command({"prefix": "osd blocklist ls", "format": "json"}, "cannot list the OSD blocklist")
        # It prints two JSON arrays back to back: the client entries, then the CIDR ranges
        # (`osd blocklist range add`), which json.loads refuses.
        text, entries, at = out.decode(errors="replace").strip(), [], 0
        decoder = json.JSONDecoder()
        try:
            while at < len(text):
                value, at = decoder.raw_decode(text, at)
                entries += value
                while at < len(text) and text[at].isspace():
                    at += 1
        except ValueError as exc:
            raise CephError(f"cannot read the OSD blocklist: {exc} in {text[:200]!r}") from None
        return frozenset(_address(str(entry["addr"])) for entry in entries if "addr" in entry)

    def wait_for_latest_osdmap(self) -> None:
        """Return once this client has the newest OSD map, so the operations it sends next carry that
        map's epoch: an OSD serves them only after catching up to it, blocklist included. Raises
        CephError."""
        import rados

        try:
            self._cluster.wait_for_latest_osdmap()
        except rados.Error as exc:
            raise _failed("cannot get the latest OSD map", exc) from None

    def break_lock(self, pool: str, name: str, locker: Locker) -> None:
        """Remove `locker`'s hold on the lock of `pool/name`, so the next client takes the lock at once
        instead of asking a holder that will never answer. An absent image or a hold already gone is
        fine. librbd blocklists the holder first (rbd_blocklist_on_break_lock, on by default); break
        only the locks of clients already blocklisted. Raises CephError."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:  # a read-only open may break locks
                    image.break_lock(locker.client, locker.cookie)
            except rbd.ImageNotFound:  # the image, or the hold (ENOENT either way)
                return
            except rbd.Error as exc:
                raise _failed(f"cannot break {locker.client}'s lock on {pool}/{name}", exc) from None

    def _mon_command(self, command: dict[str, Any], what: str) -> bytes:
        import rados

        try:
            ret, out, status = self._cluster.mon_command(json.dumps(command), b"")
        except rados.Error as exc:
            raise _failed(what, exc) from None
        if ret != 0:
            kind = CephUnavailable if -ret in UNAVAILABLE_ERRNOS else CephError  # ret is a negative errno
            raise kind(f"{what}: the monitor answered {ret} ({status.strip() or 'no reason given'})")
        return bytes(out)

    # -- image stores -----------------------------------------------------------------------------

    def store_image(self, pool: str, name: str, raw: Path) -> None:
        """Write a raw file as `pool/name`, snapshot it as `base` and protect the snapshot; any
        earlier partial attempt is removed first, and a failure leaves nothing behind."""
        import rbd

        size = raw.stat().st_size
        self.remove_image(pool, name)
        with self.pool(pool) as ioctx:
            try:
                rbd.RBD().create(ioctx, name, size, features=rbd.RBD_FEATURE_LAYERING)
                with rbd.Image(ioctx, name) as handle, open(raw, "rb") as source:
                    offset = 0
                    while chunk := source.read(4 * 1024 * 1024):
                        if chunk.count(0) != len(chunk):  # leave holes sparse
                            handle.write(chunk, offset)
                        offset += len(chunk)
                    handle.create_snap(SNAPSHOT)
                    handle.protect_snap(SNAPSHOT)
            except (rbd.Error, OSError) as exc:
                self.remove_image(pool, name)
                raise _failed(f"cannot store image {pool}/{name}", exc) from None

    def clones(self, pool: str, name: str) -> list[str]:
        """The clones of `pool/name@base` (VM disks, as `pool/disk`); [] if the image is gone."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name, snapshot=SNAPSHOT, read_only=True) as handle:
                    return sorted(f"{child['pool']}/{child['image']}" for child in handle.list_children2())
            except rbd.ImageNotFound:
                return []
            except rbd.Error as exc:
                raise _failed(f"cannot list the clones of {pool}/{name}@{SNAPSHOT}", exc) from None

    def remove_image(self, pool: str, name: str) -> None:
        """Remove an image with its snapshot (it must have no clones left)."""
        import rbd

        with self.pool(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as handle:
                    for snap in list(handle.list_snaps()):
                        if handle.is_protected_snap(snap["name"]):
                            handle.unprotect_snap(snap["name"])
                        handle.remove_snap(snap["name"])
            except rbd.ImageNotFound:
                return
            except rbd.Error as exc:
                raise _failed(f"cannot remove image {pool}/{name}", exc) from None
        self.remove(pool, name)


def _grow(ioctx: Any, pool: str, name: str, size_gib: int) -> None:
    """Grow the image to size_gib if it is smaller (never shrink it: that would cut off the guest's data)."""
    import rbd

    try:
        with rbd.Image(ioctx, name) as handle:
            if handle.size() < size_gib * GIB:
                handle.resize(size_gib * GIB)
    except rbd.Error as exc:
        raise _failed(f"cannot resize {pool}/{name}", exc) from None


def _failed(what: str, exc: Exception) -> CephError:
    """The CephError for a failed binding call (rados.Error, rbd.Error or OSError, each with its
    errno): CephUnavailable if retrying may help."""
    kind = CephUnavailable if getattr(exc, "errno", None) in UNAVAILABLE_ERRNOS else CephError
    return kind(f"{what}: {exc}")


def _address(text: str) -> str:
    """One client address as watchers, lockers and the blocklist print it: `ip:port/nonce`, without
    a messenger prefix (`v1:`, `v2:`, `any:`) that some listings add."""
    text = text.strip()
    for prefix in ("any:", "v1:", "v2:"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _addresses(text: str) -> list[str]:
    """A client's addresses as `get_addrs` prints them: one address, or a vector `[v2:…,v1:…]`."""
    return [_address(part) for part in text.strip().strip("[]").split(",") if part.strip()]
