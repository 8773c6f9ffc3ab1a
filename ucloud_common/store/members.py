"""The etcd members a process talks to, and the one path every call of the store takes to them.

Why the store keeps its members itself instead of using the client library's failover: pyetcd
fails over only inside its own wrapped methods, but the store needs requests those do not offer
(ranges paged at one revision, transactions whose failure branch reads the compared keys), and
the library's raw stubs skip its failover. Measured with three members on loopback: killing the
member a Store used left every read and write failing (503 from every API request) until that
member came back. And its failover refuses every call for `time_retry` seconds (default 300) once
all members have failed once, which turned a restart of a single-member etcd into a five-minute
outage (LAB.md).

Policy:
- One member is in use at a time (the first is picked at random, spreading processes over the
  cluster); a process stays on it while it answers.
- A call that fails because of the member (unreachable, restarting, no leader, too slow, see
  `failures.BY_CODE`) marks it failed and moves the process to another member; a member that
  failed recently is picked again only when every other one failed more recently. No call is ever
  refused without being tried: a single-member cluster is tried again at once after a restart.
- A read, a lease call or a watch is repeated on the next member at once, within the same
  `etcd_timeout`. A write is repeated only when gRPC says it never left this process (connection
  refused); otherwise it may have been applied, and the caller gets `StoreUnavailable` (its
  contract: retry later with a compare-and-swap), while its next call goes to another member.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pyetcd.exceptions as etcd_errors
from pyetcd.etcdrpc import rpc_pb2, rpc_pb2_grpc

from ucloud_common.config import Settings
from ucloud_common.metrics import timed_etcd_call
from ucloud_common.store.errors import StoreError, StoreRefused, StoreUnavailable
from ucloud_common.store.failures import describe, never_sent, rule_for, store_error

log = logging.getLogger(__name__)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# etcd accepts values up to 1.5 MiB, so even a page of small records may exceed gRPC's default
# 4 MiB message limit when a few values are large.
_MAX_MESSAGE = 256 * 1024 * 1024

# gRPC's default reconnect backoff grows to two minutes: after an etcd restart a daemon would sit
# idle that long. Keep-alives notice a dead TCP connection (a crashed machine, a cut network) that
# would otherwise leave a watch hanging silently.
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Pings only while a call (e.g. a watch) is open, and no more often than etcd allows (its
    # --grpc-keepalive-min-time is 5 s; pinging an idle connection earns a GOAWAY "too_many_pings").
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]

# How long a member that failed is avoided while another member has not failed since. Long
# enough that a dead member is not retried on every call of a busy API worker; a member is
# never avoided when no other one is better.
FAILED_MEMBER_AVOID_S = 30.0

# A retryable call gets two passes over the members: the second, after this pause, catches a
# member whose connection is being re-established (an etcd restart, a worker's first call), which
# gRPC reports at once as refused rather than waiting for it.
_SECOND_PASS_PAUSE_S = 0.1

# etcd ends a stream carrying this metadata when its member loses its leader (and refuses to open
# one without a leader), instead of keeping a watch or a lease renewal open on a member cut off from
# the cluster (etcd's rpctypes.MetadataRequireLeaderKey; clientv3.WithRequireLeader).
REQUIRE_LEADER: Metadata = (("hasleader", "true"),)


@dataclass(eq=False)
class Member:
    """One member's channel and stubs, and when it last failed (monotonic seconds; None: never)."""

    netloc: str
    channel: grpc.Channel
    kv: rpc_pb2_grpc.KVStub
    lease: rpc_pb2_grpc.LeaseStub
    watch: rpc_pb2_grpc.WatchStub
    auth: rpc_pb2_grpc.AuthStub
    failed_at: float | None = None

    @classmethod
    def connect(cls, netloc: str, credentials: grpc.ChannelCredentials | None) -> Member:
        """A lazily connecting channel: nothing touches the network until the first call."""
        channel = (grpc.secure_channel(netloc, credentials, options=_GRPC_OPTIONS) if credentials
                   else grpc.insecure_channel(netloc, options=_GRPC_OPTIONS))
        return cls(netloc, channel, rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel),
                   rpc_pb2_grpc.WatchStub(channel), rpc_pb2_grpc.AuthStub(channel))


class MemberFailed(Exception):
    """A call failed because of its member (now marked failed); `error` is what the caller gets if no
    other member answers, `never_sent` whether the request certainly did not reach the member."""

    def __init__(self, error: StoreError, cause: BaseException, never_sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.cause = cause
        self.never_sent = never_sent


class Members:
    """The members of one etcd cluster, and the member in use. Thread-safe: one per process (or per
    Store) serves every thread."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.etcd_timeout
        credentials = _tls(settings)
        self._members = [Member.connect(ep.netloc, credentials) for ep in settings.etcd_endpoints]
        self._current = random.randrange(len(self._members))
        self._user, self._password = settings.etcd_user, settings.etcd_password
        self._token: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        return len(self._members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.netloc for m in self._members)

    @property
    def current(self) -> str:
        """host:port of the member in use now."""
        return self._members[self._current].netloc

    # -- choosing a member ------------------------------------------------------------------------

    def pick(self, avoid: Iterable[Member] = ()) -> Member:
        """The member to use: the current one unless it is in `avoid` or failed recently; else the
        next member that did not fail recently; else the one whose failure is oldest."""
        avoided = set(avoid)
        with self._lock:
            now = time.monotonic()
            count = len(self._members)
            order = [self._members[(self._current + i) % count] for i in range(count)]
            candidates = [m for m in order if m not in avoided] or order
            fresh = [m for m in candidates if m.failed_at is None or now - m.failed_at >= FAILED_MEMBER_AVOID_S]
            choice = fresh[0] if fresh else min(candidates, key=lambda m: m.failed_at or 0.0)
            previous = self._members[self._current]
            self._current = self._members.index(choice)
        if choice is not previous:
            log.warning("etcd: now using member %s instead of %s", choice.netloc, previous.netloc)
        return choice

    def failed(self, member: Member, error: BaseException) -> None:
        """Note that `member` failed (with `error`), so that the next calls go to another member."""
        with self._lock:
            member.failed_at = time.monotonic()
        log.debug("etcd member %s failed: %s", member.netloc, error)

    # -- calling ----------------------------------------------------------------------------------

    def call(self, what: str, rpc: Callable[[Member, float, Metadata], T], *, retry_safe: bool,
             operation: str) -> T:
        """Run `rpc(member, seconds_left, metadata)` on a healthy member within `etcd_timeout`.

        `what` names the call in errors ("range /v1/vm/…"), `operation` in the metrics ("range": a
        fixed word, see `metrics.timed_etcd_call`). With `retry_safe`, a failure of the
        member is repeated on the others (two passes); without, only a failure that certainly never
        reached a member is. Raises the store's error for the last failure: `StoreUnavailable` when
        no member answered in time, `StoreRefused` (or a subclass) when etcd refused the request.
        """
        with timed_etcd_call(operation):
            return self._call(what, rpc, retry_safe)

    def _call(self, what: str, rpc: Callable[[Member, float, Metadata], T], retry_safe: bool) -> T:
        deadline = time.monotonic() + self.timeout
        last: MemberFailed | None = None
        for second_pass in (False, True):
            if second_pass:
                time.sleep(max(0.0, min(_SECOND_PASS_PAUSE_S, deadline - time.monotonic())))
            tried: list[Member] = []
            for _ in self._members:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                member = self.pick(avoid=tried)
                try:
                    return self._attempt(member, what, rpc, left)
                except MemberFailed as failure:
                    if not (retry_safe or failure.never_sent):
                        raise failure.error from None
                    tried.append(member)
                    last = failure
        if last is None:
            raise StoreUnavailable(f"etcd at {self.endpoints} is unavailable ({what}): no answer within "
                                   f"{self.timeout} s")
        # Every member was tried: say so, with what the last one said.
        raise (store_error(last.cause, what, self.endpoints) if len(self._members) > 1 else last.error) from None

    def _attempt(self, member: Member, what: str, rpc: Callable[[Member, float, Metadata], T], left: float) -> T:
        """One try on one member; an expired auth token is renewed once."""
        for renewed in (False, True):
            try:
                self.ensure_open(what)
                return rpc(member, left, self.metadata(member, left))
            except (grpc.RpcError, etcd_errors.Etcd3Exception, ValueError) as exc:
                if isinstance(exc, ValueError) and not self._closed:
                    raise  # a bug in building the request, not a failure of etcd
                if not renewed and self._user and _code(exc) is grpc.StatusCode.UNAUTHENTICATED:
                    self._token = None  # expired (simple tokens do after --auth-token-ttl idle)
                    continue
                raise self.failure(member, what, exc) from None
        raise AssertionError("unreachable")

    def failure(self, member: Member, what: str, exc: BaseException) -> BaseException:
        """What a failed call on `member` raises: `MemberFailed` (the member is marked failed) if
        another member may answer, else the store's error."""
        error = store_error(exc, what, member.netloc)
        if self._closed:
            return StoreUnavailable(f"etcd at {self.endpoints} is unavailable ({what}): the store was closed")
        if not rule_for(exc).other_member:
            return error
        self.failed(member, error)
        return MemberFailed(error, exc, never_sent(exc))

    def metadata(self, member: Member, left: float, require_leader: bool = False) -> Metadata:
        """The metadata every call carries: the auth token (fetched on first use), and with
        `require_leader` etcd's "hasleader" flag for long-lived streams."""
        token: Metadata = ()
        if self._user:
            if self._token is None:
                self._authenticate(member, left)
            token = (("token", str(self._token)),)
        return token + (REQUIRE_LEADER if require_leader else ())

    def _authenticate(self, member: Member, left: float) -> None:
        request = rpc_pb2.AuthenticateRequest(name=self._user, password=self._password)
        try:
            self._token = member.auth.Authenticate(request, timeout=left).token
        except grpc.RpcError as exc:
            if rule_for(exc).other_member:
                raise  # the member failed, not the credentials: the caller fails over
            raise StoreRefused(f"etcd at {member.netloc} refused to authenticate user {self._user!r} "
                               f"(UCLOUD_ETCD_USER, UCLOUD_ETCD_PASSWORD): {describe(exc)}") from None

    def ensure_open(self, what: str) -> None:
        """`StoreUnavailable` once the store was closed."""
        if self._closed:
            raise StoreUnavailable(f"etcd at {self.endpoints} is unavailable ({what}): the store was closed")

    def close(self) -> None:
        self._closed = True
        for member in self._members:
            member.channel.close()


def _code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if isinstance(exc, grpc.RpcError) and callable(code) else None


def _tls(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials when a CA is configured (with a client certificate for mutual TLS)."""
    if not settings.etcd_ca_cert:
        return None

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(settings.etcd_ca_cert), read(settings.etcd_cert_key),
                                        read(settings.etcd_cert_cert))
