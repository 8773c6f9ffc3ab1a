"""The API worker's read cache: the families its lists and token checks read, mirrored in memory
from etcd's watch (`ucloud_common.store.mirror`), and what makes a read from it safe for the client.

- **Lists** are served from memory in key order, one page at one revision (`X-Ucloud-Revision`), with
  `?limit=` and an opaque `?continue=` token (the last name shown), as the Kubernetes API does.
- **Read-your-writes.** Every accepted write answers `X-Ucloud-Revision` (its revision), and the
  worker that took it remembers it for the caller. A read waits, at most `WAIT_S`, for the mirror to
  pass the newer of that and the revision the client sends back in the same header; past that (at
  once for a family that was quiet) it asks etcd whether the family changed since the mirror's
  revision, and lists it only if it did, so a read never shows the state before the caller's own write. A
  client's kept-alive connection stays with one worker, which remembers; a client that opens a new
  connection for each request reaches any worker, and sends the revision back (the CLI does).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request

from ucloud_api.errors import APIError
from ucloud_api.query import header
from ucloud_common.event import EVENTS
from ucloud_common.file import FILES
from ucloud_common.host import HOSTS, HOSTS_ALIVE
from ucloud_common.image import IMAGES
from ucloud_common.network import NETWORKS
from ucloud_common.record import Family, R, check_key_part
from ucloud_common.store import AbstractStore, StoreError, Versioned
from ucloud_common.store.mirror import Index, Mirror, Render
from ucloud_common.store.watch import WATCH_IDLE_S
from ucloud_common.user import TOKENS, USERS
from ucloud_common.vm import VMS

REVISION_HEADER = "X-Ucloud-Revision"
CONTINUE_HEADER = "X-Ucloud-Continue"
MAX_LIMIT = 1000
# How long a read waits for the mirror to pass the revision it needs before it asks etcd. The watch
# delivers a write to every worker within a few ms here.
WAIT_S = 0.1
# A family none of whose changes came for this long is quiet: a read that needs a later revision
# (the caller wrote a VM, then lists images) asks etcd at once whether it changed, rather than wait
# for a revision that its watch may never deliver (`Mirror.confirm`).
QUIET_S = 1.0
# Bytes of list pages a worker keeps to answer again (`Pages`).
PAGES_BUDGET = 16 * 2**20
# Events of each object the cache keeps: the last ones, which GET /vms/{id} shows.
LAST_EVENTS = 20
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

        # A live watch hears from etcd at least every WATCH_IDLE_S (a progress answer when nothing
        # changes), within etcd_timeout; a mirror silent for longer is cut off, and not trusted.
        # And like every daemon's follower, each lists again every resync_interval: a change the
        # watch lost (a bug: a transaction's changes once were) costs one cadence, not the worker's life.
        stale, resync = WATCH_IDLE_S + store.settings.etcd_timeout + 1.0, store.settings.resync_interval

        def mirror(family: Family[R], indexes: dict[str, Index] | None = None, render: Render | None = None) -> Mirror[R]:
            return Mirror(store, family, indexes, render, stale_after=stale, resync_interval=resync)

        self.vms = mirror(VMS, {"owner": owner, "host": lambda vm: vm.host, "status": lambda vm: vm.status.value},
                          vm_render)
        self.networks = mirror(NETWORKS, {"owner": owner}, _rendered)
        self.images = mirror(IMAGES, {"owner": owner}, _rendered)
        self.files = mirror(FILES, {"owner": owner}, _rendered)
        self.hosts = mirror(HOSTS)
        self.alive = mirror(HOSTS_ALIVE)
        # Only each object's last events (what GET /vms/{id} shows; GET /events reads etcd): all of
        # a week's, 1.9 KB each, were ≈360 MiB per worker for 10,000 VMs of 20 events each, and
        # grew without bound with a VM that crashes and restarts all week.
        self.events = Mirror(store, EVENTS, {"object": lambda event: event.object}, stale_after=stale,
                             resync_interval=resync, keep_last=("object", LAST_EVENTS))
        self.users = mirror(USERS)
        self.tokens = mirror(TOKENS)
        self._mirrors: list[Mirror[Any]] = [self.vms, self.networks, self.images, self.files, self.hosts,
                                             self.alive, self.events, self.users, self.tokens]
        self.pages = Pages(PAGES_BUDGET)
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

    def loaded(self, timeout: float) -> bool:
        """Whether every mirror holds its first listing (waiting up to `timeout` s for it)."""
        deadline = time.monotonic() + timeout
        for mirror in self._mirrors:
            while not mirror.ready:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        return True

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
    sent = header(REVISION_HEADER)
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


def fresh(mirror: Mirror[R], wait: float = WAIT_S, at_least: int = 0) -> bool:
    """Whether `mirror` may answer this request (it has seen what the request needs, and `at_least`)."""
    return mirror.wait_for(max(needed_revision(), at_least), wait)


def caught_up(mirror: Mirror[R], at_least: int = 0) -> Mirror[R]:
    """`mirror`, having seen what this request needs: waited for, or else given a listing from etcd.
    A sent revision etcd has not reached is no write's: no mirror and no listing ever reaches it, and
    listing for it would let any caller make every request list the whole family. Such a request is
    answered from the mirror as it is (its revision in the header), as one without the header."""
    quiet = mirror.quiet_for() >= QUIET_S
    if fresh(mirror, wait=0 if quiet else WAIT_S, at_least=at_least):
        return mirror
    # One reader at a time per mirror asks etcd: readers that need it meanwhile wait for it and are
    # served by it, rather than each list the whole family at once (a watch that lags under load,
    # with every reader adding a listing to the load).
    with mirror.refreshing:
        if fresh(mirror, wait=0, at_least=at_least):
            return mirror
        store: AbstractStore = current_app.extensions["ucloud.store"]
        sent, present = max(sent_revision(), at_least), store.revision()  # one small read, before larger ones
        if sent > present:
            return mirror
        # Whether the family changed since the table's revision: etcd reads every key of the family
        # to answer, so never for a revision from the future, which any caller may send on every
        # request. (A quiet family that did change: the caller's own write, which its watch
        # delivers soon.)
        if mirror.confirm() or fresh(mirror, wait=WAIT_S if quiet else 0, at_least=at_least):
            return mirror
        mirror.refresh(store.list(mirror.family))
    return mirror


def get_settled(family: Family[R], name: str, fallback: Callable[[], Versioned[R] | None]) -> Versioned[R] | None:
    """One record from the mirror whatever its revision, else from `fallback` (etcd): for what a
    reader needs of a record that never changes once made (a network's prefix). No freshness to
    wait for, so never a round trip per record for a reader whose own write the mirror has not
    passed (a list of 1,000 VMs with NICs made 1,000 of them)."""
    found = cache().mirror(family).table.items.get(name)
    return found if found is not None else fallback()


def kept_rendering(family: Family[R], item: Versioned[R]) -> bytes | None:
    """The JSON the mirror made of `item` when it took it in, if `item` is what it holds (a record
    read from the mirror, not since changed), else None."""
    with cache().mirror(family).locked() as table:
        return table.rendered.get(item.name) if table.items.get(item.name) is item else None


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


def page_args() -> tuple[str, int | None, int]:
    """`?continue=` (the name to go on after, and the revision of the page it follows) and `?limit=`,
    or 400 saying what is wrong."""
    limit_text = request.args.get("limit")
    limit = None
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text[:5]) <= MAX_LIMIT:
            raise APIError(400, "bad_request", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    token = request.args.get("continue")
    after, revision = _after(token) if token else ("", 0)  # an empty one: the first page
    return after, limit, revision


def continue_token(after: str, revision: int = 0) -> str:
    """The next page's token: the last name shown, and the page's revision, which the next page is
    at least as new as (pages served by workers whose mirrors differ never go back in time)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after, "revision": revision}).encode()).decode().rstrip("=")


def _after(token: str) -> tuple[str, int]:
    bad = APIError(400, "bad_request", "continue: not a token this API gave (send back the "
                   f"{CONTINUE_HEADER} header of the previous page as it is)")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    after = decoded.get("after") if isinstance(decoded, dict) else None
    revision = decoded.get("revision", 0) if isinstance(decoded, dict) else None  # (none in older tokens)
    if not isinstance(after, str) or type(revision) is not int or not 0 <= revision < 2**63:
        raise bad
    try:
        return check_key_part(after), revision
    except ValueError:
        raise bad from None


Show = Callable[[Versioned[Any]], bytes]


def list_reply(family: Family[R], show: Show | None = None, index: str | None = None, value: str = "",
               keep: Callable[[R], bool] | None = None) -> Response:
    """A page of the family (found by `index` = `value`, kept by `keep`), each record as the mirror
    rendered it, or else as `show` makes it (default: its JSON), with its revision and, if more
    follow, the token of the next page. From the mirror when it is fresh, else from one etcd listing
    (which the mirror keeps).

    Only the page's records are taken under the mirror's lock; what is left to render is rendered
    after it (records are frozen): the watch thread waits for the same lock, and a page of 1,000
    VMs with NICs rendered under it kept every change, and every other reader, waiting."""
    after, limit, at_least = page_args()
    pages = cache().pages
    with caught_up(cache().mirror(family), at_least).locked() as table:
        revision = table.revision
        # Pages found by an index alone (a user's own VMs) are kept: the same page at the same
        # revision is the same bytes, asked again and again by a client that polls its list.
        key = (family.prefix, index, value, after, limit, revision) if keep is None else None
        kept = pages.get(key) if key is not None else None
        if kept is None:
            items, more = table.page(after, limit, index, value, keep)
            made = [table.rendered.get(item.name) for item in items]
    if kept is None:
        shown = show or _rendered
        body = b"[" + b",".join(m if m is not None else shown(i) for i, m in zip(items, made)) + b"]"
        kept = body, items[-1].name if more else ""
        if key is not None:
            pages.put(key, kept)
    response = Response(kept[0], mimetype="application/json")
    response.headers[REVISION_HEADER] = str(revision)
    if kept[1]:
        response.headers[CONTINUE_HEADER] = continue_token(kept[1], revision)
    return response


class Pages:
    """Pages answered lately (their body, and the name the next one goes on after, "" for none), by
    what made them; at most `budget` bytes of bodies, the least recently answered dropped first."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._pages: OrderedDict[tuple[Any, ...], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> tuple[bytes, str] | None:
        with self._lock:
            found = self._pages.get(key)
            if found is not None:
                self._pages.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], page: tuple[bytes, str]) -> None:
        if len(page[0]) > self._budget // 4:
            return  # (an admin's page of 1,000: kept, it would push out every user's)
        with self._lock:
            old = self._pages.pop(key, None)
            self._held += len(page[0]) - (len(old[0]) if old else 0)
            self._pages[key] = page
            while self._held > self._budget:
                _, dropped = self._pages.popitem(last=False)
                self._held -= len(dropped[0])


__all__ = [
    "CONTINUE_HEADER",
    "LAST_EVENTS",
    "REVISION_HEADER",
    "Index",
    "ReadCache",
    "cache",
    "compact_json",
    "fresh",
    "get_cached",
    "get_settled",
    "install",
    "list_reply",
    "needed_revision",
    "sent_revision",
]
