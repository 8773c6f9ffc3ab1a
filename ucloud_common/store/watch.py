"""One etcd watch on its own gRPC stream, that notices when it breaks or falls silent.

The client library's watcher shares one stream among all watches of a client, raises
`WatchTimedOut` (an exception the store did not expect: it ended a daemon's `Follower` in one of
three etcd restarts) and drops the answers to progress requests. This watch is small enough to be
obvious:

- It opens on the member the store uses, through the same failover as every other call, with
  etcd's "hasleader" flag: a member cut off from its leader ends the stream instead of serving a
  watch that will never see another change.
- After `idle` seconds without a word from etcd it sends a progress request (etcd 3.4 answers at
  once with an empty response, measured in under a millisecond); if that is not answered within
  `etcd_timeout`, the stream is declared dead. gRPC's keep-alive pings (10 s + 5 s) catch a dead
  connection; this catches a live connection whose stream no longer delivers (a stalled member, a
  proxy in between). `progress_notify` on the create request would not do: etcd sends those only
  every 10 minutes by default (--experimental-watch-progress-notify-interval).
- Progress answers only prove liveness: they are never used to advance the revision a caller
  resumes from, because etcd 3.4 may send a progress revision ahead of events it has not yet
  delivered (etcd issue #15220, fixed in 3.4.24 and 3.5.8).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pyetcd.exceptions as etcd_errors
from pyetcd.etcdrpc import kv_pb2, rpc_pb2

from ucloud_common.store.errors import (
    Compacted,
    StoreError,
    StoreRefused,
    StoreUnavailable,
)
from ucloud_common.store.members import Member, MemberFailed, Members

# Seconds of silence after which a watch asks etcd for progress. A quiet prefix costs one tiny
# request per stream this often; a stream that went silent is noticed after this + etcd_timeout.
WATCH_IDLE_S = 5.0


@dataclass(frozen=True)
class Event:
    """One change of one key: `value` None means it was deleted."""

    key: bytes
    value: bytes | None
    mod_revision: int
    create_revision: int


class Watch:
    """A watch of the keys in [key, range_end) (just `key` without range_end) from `start_revision`.

    Contract:
    - `next(timeout)` returns the events of the next response in revision order (an empty list for a
      progress answer), or None if nothing came within `timeout`.
    - When the stream breaks or falls silent, `next` raises `StoreUnavailable` (the member is noted
      as failed, so watching again goes to another member if there is one). Watching again from the
      last event's revision + 1 misses nothing and repeats nothing: etcd keeps every revision until
      it is compacted, and revisions are the same on every member.
    - When `start_revision` was compacted, opening or `next` raises `Compacted`: list again.
    - `cancel()` ends it; it is safe to call more than once and from any thread.
    """

    def __init__(self, members: Members, key: bytes, range_end: bytes | None, start_revision: int,
                 idle: float = WATCH_IDLE_S) -> None:
        self._members = members
        self._create = rpc_pb2.WatchCreateRequest(key=key, start_revision=start_revision)
        if range_end is not None:
            self._create.range_end = range_end
        self._what = f"watch {key.decode(errors='replace')} from revision {start_revision}"
        self._idle = idle
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._call: Any = None
        self._member: Member | None = None
        self._heard_at = time.monotonic()
        self._progress_asked_at: float | None = None
        self._open()

    @property
    def member(self) -> str:
        return self._member.netloc if self._member else ""

    # -- opening ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open on a healthy member, trying each once within `etcd_timeout`."""
        deadline = time.monotonic() + self._members.timeout
        tried: list[Member] = []
        error: StoreError | None = None
        for _ in range(len(self._members)):
            if time.monotonic() >= deadline:
                break
            member = self._members.pick(avoid=tried)
            try:
                self._start(member, deadline)
                return
            except MemberFailed as failure:
                tried.append(member)
                error = failure.error
        raise error or StoreUnavailable(f"etcd at {self._members.endpoints} is unavailable ({self._what}): "
                                        f"no member confirmed it within {self._members.timeout} s")

    def _start(self, member: Member, deadline: float) -> None:
        self._member = member
        self._requests = queue.Queue()
        self._inbox = queue.Queue()
        self._requests.put(rpc_pb2.WatchRequest(create_request=self._create))
        self._members.ensure_open(self._what)
        try:
            metadata = self._members.metadata(member, deadline - time.monotonic(), require_leader=True)
            self._call = member.watch.Watch(_requests(self._requests), metadata=metadata)
        except (grpc.RpcError, etcd_errors.Etcd3Exception) as exc:
            raise self._members.failure(member, self._what, exc) from None
        threading.Thread(target=_read, args=(self._call, self._inbox), daemon=True,
                         name=f"watch-{member.netloc}").start()
        while True:
            try:
                item = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.cancel()
                error = StoreUnavailable(f"etcd at {member.netloc} is unavailable ({self._what}): not "
                                         f"confirmed within {self._members.timeout} s (the member accepts "
                                         "connections but does not answer)")
                self._members.failed(member, error)
                raise MemberFailed(error, error, never_sent=False) from None
            self._check(item)
            if item.created:
                self._heard_at = time.monotonic()
                return

    # -- following --------------------------------------------------------------------------------

    def next(self, timeout: float) -> list[Event] | None:
        """The next response's events ([] for a progress answer), or None after `timeout`."""
        self._keep_alive()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            self._keep_alive()
            return None
        try:
            self._check(item)
        except MemberFailed as failure:
            raise failure.error from None
        self._heard_at = time.monotonic()
        self._progress_asked_at = None
        return [_event(e) for e in item.events]

    def _keep_alive(self) -> None:
        """Ask for progress after `idle` seconds of silence; declare the stream dead when that
        request goes unanswered for `etcd_timeout`."""
        now = time.monotonic()
        if self._progress_asked_at is None:
            if now - self._heard_at >= self._idle:
                self._progress_asked_at = now
                self._requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
            return
        if now - self._progress_asked_at < self._members.timeout:
            return
        error = StoreUnavailable(
            f"etcd at {self.member} is unavailable ({self._what}): the stream fell silent: nothing for "
            f"{now - self._heard_at:.1f} s, and a progress request was not answered within "
            f"{self._members.timeout} s")
        self.cancel()
        if self._member is not None:
            self._members.failed(self._member, error)
        raise error

    def _check(self, item: Any) -> None:
        """Raise if `item` says the stream broke (`MemberFailed`, or the store's error if another
        member would not help), was cancelled or compacted."""
        assert self._member is not None
        if item is None or isinstance(item, BaseException):
            self.cancel()
            reason = item if item is not None else StoreUnavailable("the member closed the stream")
            raise self._members.failure(self._member, self._what, reason) from None
        if item.compact_revision:
            self.cancel()
            raise Compacted(f"etcd at {self.member}: {self._what}: revision {self._create.start_revision} "
                            f"was compacted (compacted up to {item.compact_revision}); list again",
                            item.compact_revision)
        if item.canceled:
            self.cancel()
            reason = item.cancel_reason or "no reason given"
            if "permission denied" in reason:
                raise StoreRefused(f"etcd at {self.member} refused the request ({self._what}): {reason}")
            raise StoreUnavailable(f"etcd at {self.member} is unavailable ({self._what}): etcd cancelled "
                                   f"the watch: {reason}")

    def cancel(self) -> None:
        """End the stream (and its reader thread). Idempotent."""
        self._requests.put(None)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()


def _requests(requests: queue.Queue[rpc_pb2.WatchRequest | None]) -> Iterator[rpc_pb2.WatchRequest]:
    while (request := requests.get()) is not None:
        yield request


def _read(call: Any, inbox: queue.Queue[Any]) -> None:
    """Move the stream's responses into `inbox`; its end (None) or failure (the exception) last."""
    try:
        for response in call:
            inbox.put(response)
        inbox.put(None)
    except Exception as exc:  # noqa: BLE001 - not swallowed: the consumer raises it (Watch._check)
        inbox.put(exc)


def _event(event: Any) -> Event:
    kv = event.kv
    deleted = event.type == kv_pb2.Event.DELETE
    return Event(kv.key, None if deleted else kv.value, kv.mod_revision, kv.create_revision)
