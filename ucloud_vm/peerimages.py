"""This host's local image store as the other hosts see it: which images it holds (reported on its
host record), where it serves them (ucloud_vm/imageserver.py), and fetching an image it lacks from a
host that has it, before a local disk is made on it.

A fetch writes into `<image_dir>/.fetching/<uuid>.part`, asks each time from where it stopped
(`Range: bytes=N-`: a broken transfer, or an agent restarted meanwhile, resumes), and the image
enters the store only once the whole file's digest is the one image-scanner recorded in etcd: a
peer is not trusted with the bytes, only asked for them. A transfer that does not match is thrown
away whole (resuming on a wrong prefix would never match).
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ucloud_common.contentdigest import CHUNK, ZEROS, digest_of
from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_common.host import HOSTS, HOSTS_ALIVE
from ucloud_common.image import IMAGES, ImageStatus
from ucloud_common.imagestore import local_image_path, local_images
from ucloud_common.keyedlock import KeyedLocks
from ucloud_common.quoting import quote
from ucloud_common.store import AbstractStore
from ucloud_vm import imagetoken
from ucloud_vm.imageserver import image_path

log = logging.getLogger(__name__)

WAIT = 30.0
"""Seconds before a VM whose image no host could give is looked at again (a host may come back)."""

STALLS = 3
"""Times in a row a peer may break a transfer without sending a byte before it is given up on (a
transfer that moves on resumes however often it breaks)."""


class ImageUnavailable(TemporaryError):
    """No live host could give the image now (none holds it, none answered, or what came did not
    match its digest): the VM waits, with this as its reason, and is looked at again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, WAIT)


@dataclass(frozen=True)
class Fetched:
    peer: str
    received: int  # bytes that came over the network (less than the image's size when resumed)
    resumed_at: int


class PeerImages:
    """The images in `image_dir`, served at `url` ("" where this host serves none), fetched from the
    other hosts with `secret` ("": never fetched) by host `host`."""

    def __init__(self, store: AbstractStore, image_dir: Path, host: str, secret: str = "", url: str = "",
                 timeout: float = 30.0) -> None:
        self._store = store
        self._image_dir = image_dir
        self._host = host
        self._secret = secret
        self.url = url
        self._timeout = timeout
        self._fetching = KeyedLocks()  # one fetch per image at a time

    def held(self) -> tuple[str, ...]:
        return local_images(self._image_dir)

    def remove_deleted(self, in_use: set[str]) -> list[str]:
        """Remove from the local store the images whose record is gone (deleted through the API),
        but those in `in_use` (the base of a disk here: a qcow2 overlay reads its image's file to
        the end), and transfers left of deleted images; return the images removed.

        The files are listed before the records: an image's record is written before its file
        (image-scanner, import-image), so a file seen here whose record is not is a deleted image's."""
        held = self.held()
        partials = list((self._image_dir / ".fetching").glob("*.part"))
        records = set(self._store.list(IMAGES).items)
        removed = [image for image in held if image not in records and image not in in_use]
        for image in removed:
            local_image_path(self._image_dir, image).unlink(missing_ok=True)
            log.info("image %s removed from this host's store: it was deleted", image)
        for partial in partials:
            if partial.name.removesuffix(".part") not in records:
                partial.unlink(missing_ok=True)
        return removed

    def ensure(self, image: str) -> Fetched | None:
        """Make sure image `image` is in the local store: fetch it from a live host that serves it
        if it is not (None: it was here). One fetch per image at a time; VMs on the same image wait
        for it. Raises ImageUnavailable (temporary), or PermanentError when the image does not exist."""
        target = local_image_path(self._image_dir, image)
        if target.is_file() or not self._secret:
            return None  # without a secret nothing is fetched: the disk's creation says the image is missing
        with self._fetching.held(image):
            if target.is_file():
                return None  # another VM's worker fetched it meanwhile
            return self._fetch(image, target)

    def _fetch(self, image: str, target: Path) -> Fetched:
        record = self._store.get(IMAGES, image)
        if record is None or record.value.status is not ImageStatus.CREATED:
            raise PermanentError(f"image {image} does not exist (or is not made yet)")
        if not record.value.digest:
            raise ImageUnavailable(f"image {image} has no digest recorded (it was made before digests were kept), so "
                                   "no host may fetch it: import it again (ucloud-vm import-image) on this host")
        peers = self._peers(image)
        if not peers:
            raise ImageUnavailable(f"image {image} is not here and no live host serves it (UCLOUD_IMAGE_SECRET)")
        failures = []
        for name, url in peers:
            try:
                fetched = self._download(name, url, image, target, record.value.size, record.value.digest)
            except _PeerFailed as exc:
                failures.append(f"{name}: {exc}")
                log.warning("image %s not fetched from %s: %s", image, name, exc)
                continue
            log.info("image %s fetched from %s: %d bytes received%s", image, name, fetched.received,
                     f" (resumed at byte {fetched.resumed_at})" if fetched.resumed_at else "")
            return fetched
        raise ImageUnavailable(f"image {image} could not be fetched: {'; '.join(failures)}")

    def _peers(self, image: str) -> list[tuple[str, str]]:
        """The live hosts but this one that say they hold `image` and serve images, in random order
        (the load of many hosts fetching at once is spread)."""
        alive = set(self._store.list(HOSTS_ALIVE).items)
        peers = [(name, host.value.image_url) for name, host in self._store.list(HOSTS).items.items()
                 if name != self._host and name in alive and host.value.image_url
                 and host.value.images is not None and image in host.value.images]
        random.shuffle(peers)
        return peers

    def _download(self, peer: str, url: str, image: str, target: Path, size: int, digest: str) -> Fetched:
        fetching = self._image_dir / ".fetching"
        fetching.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = fetching / f"{image}.part"
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            offset = resumed_at = min(os.fstat(fd).st_size, size)
            received, stalls = 0, 0
            while offset < size:
                try:
                    got, offset = self._receive(url, image, fd, offset, size)
                except _Broken as exc:
                    got, offset = exc.received, exc.offset
                    stalls = 0 if got else stalls + 1
                    if stalls >= STALLS:
                        raise _PeerFailed(f"{exc} ({STALLS} times in a row without a byte)") from None
                    log.info("image %s from %s broke at byte %d (%s); resuming", image, peer, offset, exc)
                received += got
            os.ftruncate(fd, size)  # zeros at the end were skipped, not written
            os.fsync(fd)
        finally:
            os.close(fd)
        if digest_of(partial) != digest:
            partial.unlink()
            raise _PeerFailed("what it sent does not match the image's digest (damaged in transfer, or its copy is "
                              "damaged): thrown away")
        partial.chmod(0o444)  # an image is never written: VM disks are overlays on it
        os.replace(partial, target)
        return Fetched(peer, received, resumed_at)

    def _receive(self, url: str, image: str, fd: int, offset: int, size: int) -> tuple[int, int]:
        """One request from `offset` on, written into `fd`; returns (bytes received, new offset).
        Raises _Broken when the transfer stopped early, _PeerFailed when the peer refused."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise _PeerFailed(f"its image_url {quote(url)} is not http://address:port")
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self._timeout)
        received, start = 0, offset
        try:
            connection.request("GET", image_path(image), headers={
                "Authorization": f"{imagetoken.SCHEME} {imagetoken.sign(self._secret, image, time.time())}",
                **({"Range": f"bytes={offset}-"} if offset else {})})
            response = connection.getresponse()
            if response.status not in (200, 206):
                raise _PeerFailed(f"HTTP {response.status}: {_said(response.read(2048))}")
            if response.status == 200:
                offset = start = 0  # it sends the whole file: what was here goes (a skipped hole must read zeros)
                os.ftruncate(fd, 0)
            elif not (response.getheader("Content-Range") or "").startswith(f"bytes {offset}-"):
                raise _PeerFailed(f"it answered another range than from byte {offset}")
            while offset < size and (chunk := response.read(min(CHUNK, size - offset))):
                if not (len(chunk) == CHUNK and chunk == ZEROS):  # holes stay holes: images are mostly zeros
                    os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                received += len(chunk)
        except OSError as exc:  # refused, reset, timed out: where it stopped is kept
            if received == 0 and offset == start and exc.errno == errno.ECONNREFUSED:
                raise _PeerFailed(f"connection refused at {url}") from None
            raise _Broken(str(exc) or type(exc).__name__, received, offset) from None
        except http.client.HTTPException as exc:
            raise _Broken(f"{type(exc).__name__}: {exc}", received, offset) from None
        finally:
            connection.close()
        if offset < size:
            raise _Broken("the connection ended early", received, offset)
        return received, offset


def _said(body: bytes) -> str:
    """A peer's error sentence, quoted (a peer's words reach our logs and a VM's error)."""
    try:
        return quote(str(json.loads(body)["error"]))
    except (ValueError, KeyError, TypeError):
        return quote(body.decode(errors="replace"))


class _PeerFailed(Exception):
    """This peer cannot give the image now: the next one is asked."""


class _Broken(Exception):
    def __init__(self, reason: str, received: int, offset: int) -> None:
        super().__init__(reason)
        self.received = received
        self.offset = offset
