"""The API client: where the API is, who we are, and requests that fail with one clear sentence."""

from __future__ import annotations

import configparser
import http.client
import json
import os
import select
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

UPLOAD_BLOCK = 256 * 1024  # as the API reads it: the progress bar moves by what the API took in


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ucloud" / "config"


class CLIError(Exception):
    """One line for stderr, and the exit code: 1 the API refused, 2 bad usage or configuration,
    3 the API could not be reached."""

    def __init__(self, message: str, code: int = 1, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


@dataclass(frozen=True)
class Client:
    url: str
    token: str
    timeout: float = 30.0
    PAGE = 500  # items a list asks for at once (the API answers up to 1,000)
    # The newest X-Ucloud-Revision a write answered, sent with every request: whichever API worker
    # answers next reflects this command's own writes (a new connection may reach another worker).
    seen: dict[str, int] = field(default_factory=lambda: {"revision": 0}, repr=False, compare=False)
    # Whether that revision is also kept for the next command (`remembered`): `ucloud vm stop x`
    # then `ucloud vm show x` are two processes, and the second may reach a worker a few ms behind.
    remember: bool = False

    @classmethod
    def from_environment(cls) -> Client:
        """`UCLOUD_API_URL` / `UCLOUD_TOKEN` over the config file that `ucloud login` writes."""
        parser = configparser.ConfigParser()
        parser.read(config_path())
        section = parser["default"] if parser.has_section("default") else {}
        url = os.environ.get("UCLOUD_API_URL") or section.get("api_url")
        token = os.environ.get("UCLOUD_TOKEN") or section.get("token")
        if not url or not token:
            raise CLIError("not logged in: run `ucloud login --url URL` or set UCLOUD_API_URL and UCLOUD_TOKEN", 2)
        url = url.rstrip("/")
        return cls(url, token, seen={"revision": remembered(url)}, remember=True)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, path, body)[0]

    def list(self, path: str) -> list[Any]:
        """Every item of a list, page after page (`X-Ucloud-Continue`): the API answers at most
        `limit` items a page, in key order, so an item that exists throughout is listed once."""
        items: list[Any] = []
        separator = "&" if "?" in path else "?"
        token = None
        while True:
            query = f"{separator}limit={self.PAGE}" + (f"&continue={urllib.parse.quote(token)}" if token else "")
            page, headers = self._call("GET", path + query)
            items += page
            token = headers.get("X-Ucloud-Continue")
            if not token:
                return items

    def _call(self, method: str, path: str, body: Any = None) -> tuple[Any, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "Accept": "application/json",
                     **({"X-Ucloud-Revision": str(self.seen["revision"])} if self.seen["revision"] else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                headers = response.headers
                revision = headers.get("X-Ucloud-Revision", "")
                if method != "GET" and revision.isascii() and revision.isdigit():
                    self.seen["revision"] = max(self.seen["revision"], int(revision))
                    if self.remember:
                        remember(self.url, int(revision))
        except urllib.error.HTTPError as exc:
            raise CLIError(_message(exc.code, exc.read()), http_status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(getattr(exc, "reason", exc)) from None
        return (json.loads(text) if text else None), headers

    def upload(self, name: str, source: BinaryIO, size: int, replace: bool,
               advance: Callable[[int], None] = lambda _: None) -> Any:
        """Stream `size` bytes of `source` as the file `name` (`PUT /files/{name}`), block by block,
        telling `advance` of each. The API may refuse before the body is through (the name is taken,
        too large): it answers at once, so the answer is looked for between blocks and the sending
        stops there (urllib would send it all first, and with its `Connection: close` the API hangs
        up on the rest: the answer was lost to a broken pipe)."""
        url = urllib.parse.urlsplit(self.url)
        connection = (http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection)(
            url.hostname or "", url.port, timeout=self.timeout)
        try:
            connection.putrequest("PUT", f"{url.path}/api/v1/files/{urllib.parse.quote(name, safe='')}"
                                         f"{'?replace=true' if replace else ''}")
            for header, value in (("Authorization", f"Bearer {self.token}"), ("Accept", "application/json"),
                                  ("Content-Type", "application/octet-stream"), ("Content-Length", str(size))):
                connection.putheader(header, value)
            connection.endheaders()
            try:
                while (block := source.read(UPLOAD_BLOCK)) and not _answered(connection):
                    connection.send(block)
                    advance(len(block))
            except OSError:
                pass  # the API hung up: its answer, if it gave one, says why
            response = connection.getresponse()
            status, text = response.status, response.read()
        except OSError as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()
        if status >= 400:
            raise CLIError(_message(status, text), http_status=status)
        return json.loads(text) if text else None

    def _unreachable(self, reason: object) -> CLIError:
        return CLIError(f"cannot reach the API at {self.url}: {reason}", 3)

    def find(self, collection: str, ref: str, what: str, name: str = "name") -> dict[str, Any]:
        """The `what` (VM, network, image, file) of `collection` whose uuid or `name` field is `ref`.
        Names are unique per owner, but an admin's listing spans owners, and a user's images include
        the public ones: a name two owners use is refused, not guessed."""
        try:
            return self.request("GET", f"/{collection}/{urllib.parse.quote(ref, safe='')}")
        except CLIError as exc:
            if exc.http_status not in (404, 405):  # (files have no one-item route: the list has them)
                raise
        named = [item for item in self.list(f"/{collection}") if ref in (item[name], item["uuid"])]
        if not named:
            raise CLIError(f"{what} {ref!r} does not exist (no {what} has that uuid or name)")
        if len(named) > 1:
            owners = ", ".join(sorted(item["owner"] for item in named))
            raise CLIError(f"{len(named)} {what}s are named {ref!r} (owners {owners}): give the uuid")
        return named[0]


def _answered(connection: http.client.HTTPConnection) -> bool:
    """Whether the API sent something (its answer) before the request's body was through."""
    return connection.sock is not None and bool(select.select([connection.sock], [], [], 0)[0])


def _message(status: int, text: bytes) -> str:
    try:
        error = json.loads(text)["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"the API answered {status}"


def revisions_path() -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "ucloud" / "revisions.json"


def remembered(url: str) -> int:
    """The revision of the last write a command made through the API at `url` (0: none kept, or
    the file unreadable: it is a hint for freshness, never needed to work)."""
    try:
        kept = json.loads(revisions_path().read_text()).get(url, 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return kept if type(kept) is int and kept >= 0 else 0


def remember(url: str, revision: int) -> None:
    """Keep `revision` for the next command, replacing the last one kept for `url` (the latest
    write's, not the largest: an etcd replaced since counts from 0 again). Written whole and
    renamed into place; a failure is ignored (see `remembered`)."""
    path = revisions_path()
    try:
        kept = json.loads(path.read_text()) if path.exists() else {}
        kept = kept if isinstance(kept, dict) else {}
        kept[url] = revision
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(kept))
        os.replace(partial, path)
    except (OSError, ValueError):
        pass


def save_login(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    parser = configparser.ConfigParser()
    parser["default"] = {"api_url": url.rstrip("/"), "token": token}
    # Created with 0600 from the start: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        parser.write(file)
    os.chmod(path, 0o600)
    return path
