"""The agent's image server: this host's local images, for the other hosts to fetch.

`GET /v1/images/<uuid>` with `Authorization: ucloud-image <token>` (ucloud_vm/imagetoken.py) and an
optional `Range: bytes=N-` answers the image's raw file (200, or 206 from byte N: a broken fetch
resumes where it stopped). Anything else is answered with a JSON `{"error": …}`: 400 (not an
image's name), 401 (no token), 403 (a token not signed with the hosts' secret for this image, or
expired), 404 (not here), 416 (a range past the end).

It is not the metrics port (ucloud_common/metrics.py): that one answers anybody, on 127.0.0.1 by
default, while this one must be reached from the other hosts and answers only them. It serves a
peer and nothing else: it writes nothing, and opens only files named `local_image_path` of a
checked name, never through a link.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from werkzeug.http import parse_range_header

from ucloud_common.imagestore import local_image_path
from ucloud_common.record import check_key_part
from ucloud_vm import imagetoken

log = logging.getLogger(__name__)

PREFIX = "/v1/images/"


def image_path(uuid: str) -> str:
    """The request path of image `uuid` (the one place it is made, for the server and its clients)."""
    return PREFIX + uuid


class ImageServer:
    """Serves the files of `image_dir` on `address`:`port` (0: any free port) in threads of its own
    until `close`; `url` is where the other hosts reach it."""

    def __init__(self, image_dir: Path, secret: str, address: str, port: int, timeout: float) -> None:
        handler = type("Handler", (_Handler,), {"image_dir": image_dir, "secret": secret, "timeout": timeout})
        server_class = _IPv6Server if ":" in address else ThreadingHTTPServer
        self._httpd = server_class((address, port), handler)
        self._httpd.daemon_threads = True  # a peer's download never keeps a stopping agent alive
        bound = self._httpd.server_address[1]
        self.url = f"http://[{address}]:{bound}" if ":" in address else f"http://{address}:{bound}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("serving this host's images at %s", self.url)

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    image_dir: Path
    secret: str
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server's name for it
        if not self.path.startswith(PREFIX):
            return self._error(404, "not an image's path: GET /v1/images/<uuid>")
        uuid = self.path[len(PREFIX):]
        try:
            check_key_part(uuid)
        except ValueError:
            return self._error(400, "not an image's name")
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme != imagetoken.SCHEME or not token:
            return self._error(401, f"an image is served only to a host: Authorization: {imagetoken.SCHEME} <token>")
        if not imagetoken.valid(self.secret, uuid, token, time.time()):
            return self._error(403, "the token is not signed with the hosts' UCLOUD_IMAGE_SECRET for this image, "
                               "or expired (are the hosts' clocks apart?)")
        try:
            fd = os.open(local_image_path(self.image_dir, uuid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # absent, or a link where the file should be (O_NOFOLLOW: never followed)
            return self._error(404, f"image {uuid} is not on this host")
        try:
            self._send_file(fd)
        finally:
            os.close(fd)

    def _send_file(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        start, status = 0, 200
        if (asked := self.headers.get("Range")) is not None:
            wanted = parse_range_header(asked)
            span = wanted.range_for_length(size) if wanted is not None else None
            if span is None:
                return self._error(416, f"the range {asked[:40]!r} is not within the image's {size} bytes",
                                   {"Content-Range": f"bytes */{size}"})
            start, status = span[0], 206
            if span[1] != size:
                return self._error(416, "only a range to the end of the image is served (bytes=N-)")
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        self.wfile.flush()
        with os.fdopen(fd, "rb", closefd=False) as file:
            # sendfile(2): the kernel copies, no byte of a large image passes through Python; a peer
            # that stops reading for `timeout` seconds is dropped (socket.sendfile honours it).
            self.connection.sendfile(file, start, size - start)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # http.server's signature
        log.info("image server: %s %s", self.address_string(), format % args)
