"""The API worker's read cache: the families its lists and token checks read, mirrored in memory
from etcd's watch (`ucloud_common.store.mirror`), and what makes a read from it safe for the client.

- **Lists** are served from memory in key order, one page at one revision (`X-Ucloud-Revision`), with
  `?limit=` and an opaque `?continue=` token (the last name shown), as the Kubernetes API does.
- **Read-your-writes.** Every accepted write answers `X-Ucloud-Revision` (its revision), and the
  worker that took it remembers it for the caller. A read waits, at most `WAIT_S`, for the mirror to pass the newer of that and the revision the client sends back in the same header;
  past that it reads etcd, so a read never shows the state before the caller's own write. A
  client's kept-alive connection stays with one worker, which remembers; a client that opens a new
  connection for each request reaches any worker, and sends the revision back (the CLI does).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request

from ucloud_api.errors import APIError
from ucloud_common.event import EVENTS
from ucloud_common.file import FILES
from ucloud_common.host import HOSTS, HOSTS_ALIVE
from ucloud_common.image import IMAGES
from ucloud_common.network import NETWORKS
from ucloud_common.record import Family, R, check_key_part
from ucloud_common.store import AbstractStore, StoreError, Versioned
from ucloud_common.store.mirror import Index, Mirror, Render, Table
from ucloud_common.user import TOKENS, USERS
from ucloud_common.vm import VMS

REVISION_HEADER = "X-Ucloud-Revision"
CONTINUE_HEADER = "X-Ucloud-Continue"
MAX_LIMIT = 1000
# How long a read waits for the mirror to pass the revision it needs before it lists etcd instead.
# The watch delivers a write to every worker within a few ms here; a family nobody writes (the
# caller wrote a VM, then lists images) never passes it, and costs this once, then one listing
# (which the mirror keeps: the next such read is served from memory).
WAIT_S = 0.1
# Callers whose last write a worker remembers: the least recently writing are forgotten first.
REMEMBERED = 10_000
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def compact_json(body: Any) -> bytes:
    """JSON as Flask's `jsonify` writes it (compact, ASCII), made once and kept."""
    return json.dumps(body, separators=(",", ":")).encode()


def _rendered(item: Versioned[Any]) -> bytes:
    return compact_json(item.value.model_dump(mode="json"))


class ReadCache:
    """One worker's mirrors, started with it (`start`) and stopped with it (`stop`)."""

    def __init__(self, store: AbstractStore, vm_render: Render) -> None:
        def owner(record: Any) -> str:
            return str(record.owner)

        self.vms = Mirror(store, VMS, {"owner": owner, "host": lambda vm: vm.host, "status": lambda vm: vm.status.value},
                          vm_render)
        self.networks = Mirror(store, NETWORKS, {"owner": owner}, _rendered)
        self.images = Mirror(store, IMAGES, {"owner": owner}, _rendered)
        self.files = Mirror(store, FILES, {"owner": owner}, _rendered)
        self.hosts = Mirror(store, HOSTS)
        self.alive = Mirror(store, HOSTS_ALIVE)
        self.events = Mirror(store, EVENTS, {"object": lambda event: event.object})
        self.users = Mirror(store, USERS)
        self.tokens = Mirror(store, TOKENS)
        self._mirrors: list[Mirror[Any]] = [self.vms, self.networks, self.images, self.files, self.hosts,
                                             self.alive, self.events, self.users, self.tokens]
        self._written: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> ReadCache:
        for mirror in self._mirrors:
            mirror.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop following, and wait (up to `timeout`) until no mirror uses the store any more."""
        for mirror in self._mirrors:
            mirror.stop()
        for mirror in self._mirrors:
            mirror.join(timeout)

    def mirror(self, family: Family[R]) -> Mirror[R]:
        found: Mirror[R] = next(m for m in self._mirrors if m.family is family)
        return found

    def wrote(self, caller: str, revision: int) -> None:
        with self._lock:
            self._written[caller] = max(revision, self._written.pop(caller, 0))
            if len(self._written) > REMEMBERED:
                self._written.popitem(last=False)

    def written(self, caller: str) -> int:
        with self._lock:
            return self._written.get(caller, 0)


def cache() -> ReadCache:
    the_cache: ReadCache = current_app.extensions["ucloud.cache"]
    return the_cache


def install(app: Flask, store: AbstractStore, vm_render: Render) -> ReadCache:
    """Start the app's cache, and answer every accepted write with the revision after it."""
    the_cache = ReadCache(store, vm_render).start()
    app.extensions["ucloud.cache"] = the_cache

    @app.after_request
    def tell_revision(response: Response) -> Response:
        if request.method not in _WRITES or response.status_code >= 400:
            return response
        # The written object's ETag is the write's own revision. Without one (a 204), etcd's present
        # revision, at or after the write's; it may be a later write's to another family, which
        # a mirror of this one never reaches (and the next read lists etcd): the ETag is better.
        etag = (response.headers.get("ETag") or "").strip('"')
        try:
            revision = int(etag) if etag.isascii() and etag.isdigit() else store.revision()
        except StoreError:
            return response  # the write is done; only the hint is missing
        response.headers[REVISION_HEADER] = str(revision)
        caller = g.get("caller")
        if caller is not None:
            the_cache.wrote(caller.name, revision)
        return response

    return the_cache


def sent_revision() -> int:
    """The revision in the client's `X-Ucloud-Revision` (0 if none); 400 for one that is no revision."""
    sent = request.headers.get(REVISION_HEADER)
    if sent is None:
        return 0
    sent = sent.strip()
    if not (sent.isascii() and sent.isdigit()) or len(sent) > 20:
        raise APIError(400, "bad_request", f"{REVISION_HEADER} must be a revision this API answered (digits)")
    return int(sent)


def needed_revision() -> int:
    """The revision this request's answer must reflect: the client's, or its caller's last write
    through this worker, whichever is newer."""
    caller = g.get("caller")
    return max(sent_revision(), cache().written(caller.name) if caller is not None else 0)


def fresh(mirror: Mirror[R], wait: float = WAIT_S) -> bool:
    """Whether `mirror` may answer this request (it has seen what the request needs)."""
    return mirror.wait_for(needed_revision(), wait)


def caught_up(mirror: Mirror[R]) -> Mirror[R]:
    """`mirror`, having seen what this request needs: waited for, or else given a listing from etcd."""
    if not fresh(mirror):
        store: AbstractStore = current_app.extensions["ucloud.store"]
        mirror.refresh(store.list(mirror.family))
    return mirror


def get_cached(family: Family[R], name: str, fallback: Callable[[], Versioned[R] | None]) -> Versioned[R] | None:
    """One record from the mirror when it is fresh, else (or when it is not there, e.g. made a
    moment ago through another worker) from `fallback` (etcd)."""
    mirror = cache().mirror(family)
    if fresh(mirror, wait=0):
        found = mirror.table.items.get(name)
        if found is not None:
            return found
    return fallback()


# -- pages --------------------------------------------------------------------------------------


def page_args() -> tuple[str, int | None]:
    """`?continue=` (the name to go on after) and `?limit=`, or 400 saying what is wrong."""
    limit_text = request.args.get("limit")
    limit = None
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text[:5]) <= MAX_LIMIT:
            raise APIError(400, "bad_request", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    token = request.args.get("continue")
    return (_after(token) if token else ""), limit  # an empty one: the first page


def continue_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def _after(token: str) -> str:
    bad = APIError(400, "bad_request", "continue: not a token this API gave (send back the "
                   f"{CONTINUE_HEADER} header of the previous page as it is)")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    after = decoded.get("after") if isinstance(decoded, dict) else None
    if not isinstance(after, str):
        raise bad
    try:
        return check_key_part(after)
    except ValueError:
        raise bad from None


Show = Callable[[Table[Any], Versioned[Any]], bytes]


def list_reply(family: Family[R], show: Show | None = None, index: str | None = None, value: str = "",
               keep: Callable[[R], bool] | None = None) -> Response:
    """A page of the family (found by `index` = `value`, kept by `keep`), each record as `show`
    makes it (default: its JSON made once), with its revision and, if more follow, the token of the
    next page. From the mirror when it is fresh, else from one etcd listing (which the mirror keeps)."""
    after, limit = page_args()
    with caught_up(cache().mirror(family)).locked() as table:
        return _page_reply(table, after, limit, index, value, keep, show)


def _page_reply(table: Table[R], after: str, limit: int | None, index: str | None, value: str,
                keep: Callable[[R], bool] | None, show: Show | None) -> Response:
    items, more = table.page(after, limit, index, value, keep)
    body = b"[" + b",".join(show(table, i) if show else table.rendered[i.name] for i in items) + b"]"
    response = Response(body, mimetype="application/json")
    response.headers[REVISION_HEADER] = str(table.revision)
    if more:
        response.headers[CONTINUE_HEADER] = continue_token(items[-1].name)
    return response


__all__ = [
    "CONTINUE_HEADER",
    "REVISION_HEADER",
    "Index",
    "ReadCache",
    "cache",
    "compact_json",
    "fresh",
    "get_cached",
    "install",
    "list_reply",
    "needed_revision",
    "sent_revision",
]
