"""The etcd store: typed access to key families, compare-and-swap, leases.

Contract:
- Every read returns records with their `mod_revision`; every write is conditional: `create` only if
  the key is absent, `replace` / `delete(mod_revision=…)` only if the key is unchanged since it was
  read, and `update` is read–modify–compare-and-swap retried with jittered backoff until it wins or
  `cas_attempts` races were lost (`Conflict`). Two writers never lose each other's update.
- Any write may carry a `Guard` (e.g. "I am still the leader"); if it no longer holds, the write is
  not applied and `GuardFailed` is raised.
- etcd being unreachable or slow raises `StoreUnavailable` after `etcd_timeout`; the caller decides
  its safe action. It is never retried here, because only the caller knows whether it still wants
  the write.
- A stored value that is not JSON or does not fit its model raises `InvalidRecord` from `get` and
  `update`, and is logged with its key and skipped by `list` (and by `Follower`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic

import grpc
import pyetcd
import pyetcd.exceptions
import pyetcd.utils
from pyetcd import Endpoint, MultiEndpointEtcd3Client
from pyetcd.etcdrpc import rpc_pb2

from ucloud_common.config import Settings
from ucloud_common.record import Family, InvalidRecord, R
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.store.errors import AlreadyExists, Conflict, GuardFailed, NotFound, StoreUnavailable

log = logging.getLogger(__name__)

# Keys per range request when listing: a 10,000-VM family is ≈6 MB, more than one answer should
# carry; pages keep each answer and its memory small.
_PAGE = 500
# etcd accepts values up to 1.5 MiB, so even a page of small records may exceed gRPC's default
# 4 MiB message limit when a few values are large.
_MAX_MESSAGE = 256 * 1024 * 1024

# gRPC's default reconnect backoff grows to two minutes: after an etcd restart a daemon would sit
# idle that long. Keep-alives notice a dead TCP connection (a crashed member, a cut network) that
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
# How long a member that failed a call is skipped in favour of the others. The client's default of
# 300 s makes a single-member cluster unusable for five minutes after any restart (LAB.md).
_FAILED_MEMBER_SKIP_S = 1.0


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record as read from etcd, with the revisions that a compare-and-swap needs."""

    name: str
    value: R
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Listing(Generic[R]):
    items: dict[str, Versioned[R]]
    revision: int  # the store revision the listing is a snapshot of: watch from revision + 1


@dataclass(frozen=True)
class Put(Generic[R]):
    """Store `record`; `expect` is the key's mod_revision it must still have, 0 for "must not
    exist", None for no expectation."""

    family: Family[R]
    name: str
    record: R
    expect: int | None
    lease: int | None = None


@dataclass(frozen=True)
class Remove(Generic[R]):
    """Delete the key; `expect` as for `Put`."""

    family: Family[R]
    name: str
    expect: int | None


@dataclass(frozen=True)
class Guard:
    """A precondition a write must satisfy besides its own: `key` still has this `create_revision`.

    A leader election hands one out: the leader key is re-created by every new leader, so a deposed
    leader's guarded writes fail even if its process does not know it was deposed yet."""

    key: str
    create_revision: int


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = self._connect(settings)
        self._backoff = Backoff(initial=0.002, maximum=0.2)

    @staticmethod
    def _connect(settings: Settings) -> MultiEndpointEtcd3Client:
        creds = None
        if settings.etcd_ca_cert:
            creds = MultiEndpointEtcd3Client.get_secure_creds(
                str(settings.etcd_ca_cert),
                str(settings.etcd_cert_key) if settings.etcd_cert_key else None,
                str(settings.etcd_cert_cert) if settings.etcd_cert_cert else None,
            )
        endpoints = [
            Endpoint(ep.netloc.rpartition(":")[0], ep.port, secure=creds is not None, creds=creds,
                     time_retry=_FAILED_MEMBER_SKIP_S, opts=_GRPC_OPTIONS)
            for ep in settings.etcd_endpoints
        ]
        try:
            return MultiEndpointEtcd3Client(
                endpoints=endpoints, timeout=settings.etcd_timeout, failover=True,
                user=settings.etcd_user, password=settings.etcd_password,
            )
        except grpc.RpcError as exc:
            raise StoreUnavailable(f"cannot authenticate to etcd: {exc.details()}") from None

    def close(self) -> None:
        self._client.close()

    @property
    def client(self) -> MultiEndpointEtcd3Client:
        """The raw client, for the store's own modules (watches, leases, elections)."""
        return self._client

    @contextmanager
    def unavailable_as_error(self, what: str) -> Iterator[None]:
        """Turn the client's many ways of saying "etcd did not answer" into `StoreUnavailable`."""
        try:
            yield
        except (grpc.RpcError, pyetcd.exceptions.ConnectionFailedError,
                pyetcd.exceptions.ConnectionTimeoutError, pyetcd.exceptions.NoServerAvailableError,
                pyetcd.exceptions.InternalServerError, ValueError) as exc:
            # ValueError: the client's "Trying to use a failed node" while every member is skipped.
            endpoints = ",".join(str(ep) for ep in self.settings.etcd_endpoints)
            if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
                reason = f"{exc.code().name}: {exc.details()}"
            else:
                reason = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"etcd at {endpoints} is unavailable ({what}): {reason}") from None

    # -- reads ------------------------------------------------------------------------------------

    def revision(self) -> int:
        """The store's current revision."""
        return int(self._range(b"\0", limit=1).header.revision)

    def _range(self, key: bytes | str, range_end: bytes | None = None, limit: int = 0,
               revision: int = 0) -> Any:
        request = rpc_pb2.RangeRequest(key=_b(key), limit=limit, revision=revision)
        if range_end is not None:
            request.range_end = range_end
        for attempt in (1, 2):
            try:
                with self.unavailable_as_error("range"):
                    return self._client.kvstub.Range(
                        request, self._client.timeout,
                        credentials=self._client.call_credentials, metadata=self._client.metadata,
                    )
            except StoreUnavailable:
                # A read is safe to repeat: once, shortly, so that a connection being re-established
                # (a member restarted, a worker's first call) is not reported as an outage.
                if attempt == 2:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def get(self, family: Family[R], name: str) -> Versioned[R] | None:
        key = family.key(name)
        response = self._range(key)
        if not response.kvs:
            return None
        kv = response.kvs[0]
        return Versioned(name, family.decode(key, kv.value), kv.mod_revision, kv.create_revision)

    def list(self, family: Family[R], within: str = "", where: Mapping[str, str] | None = None) -> Listing[R]:
        """Every valid record of the family (whose name starts with `within`, and whose top-level
        fields equal `where`), as one consistent snapshot: read in pages, every page at the first
        page's revision. `where` is checked before a record is validated, which is most of the cost
        of a large listing."""
        prefix = (family.prefix + within).encode()
        end = _prefix_end(prefix)
        items: dict[str, Versioned[R]] = {}
        start, revision = prefix, 0
        while True:
            response = self._range(start, range_end=end, limit=_PAGE, revision=revision)
            revision = revision or response.header.revision
            for kv in response.kvs:
                if where and not _matches(kv.value, where):
                    continue
                try:
                    record = family.decode(kv.key, kv.value)
                except InvalidRecord as exc:
                    log.warning("skipping invalid record %s", exc)
                    continue
                name = family.name_of(kv.key)
                items[name] = Versioned(name, record, kv.mod_revision, kv.create_revision)
            if not response.more:
                return Listing(items, revision)
            start = response.kvs[-1].key + b"\0"

    # -- writes -----------------------------------------------------------------------------------

    def create(self, family: Family[R], name: str, record: R, *, lease: int | None = None,
               guard: Guard | None = None) -> Versioned[R]:
        """Store `record` under a new key; `AlreadyExists` if the key exists."""
        key = family.key(name)
        response = self._txn(
            [self._client.transactions.create(key) == 0], [self._put(key, family.encode(record), lease)],
            guard,
        )
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise AlreadyExists(f"{key} already exists")
        revision = response.header.revision
        return Versioned(name, record, revision, revision)

    def replace(self, family: Family[R], name: str, record: R, mod_revision: int, *,
                lease: int | None = None, guard: Guard | None = None) -> Versioned[R]:
        """One compare-and-swap: store `record` only if the key is still at `mod_revision`."""
        key = family.key(name)
        response = self._txn(
            [self._client.transactions.mod(key) == mod_revision],
            [self._put(key, family.encode(record), lease), self._client.transactions.get(key)], guard,
        )
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise Conflict(f"{key} changed since revision {mod_revision}")
        written = response.responses[1].response_range.kvs[0]
        return Versioned(name, record, written.mod_revision, written.create_revision)

    def update(self, family: Family[R], name: str, change: Callable[[R], R | None], *,
               guard: Guard | None = None) -> Versioned[R]:
        """Read, apply `change`, compare-and-swap; on a lost race, re-read and re-apply.

        `change` gets the current record and returns the new one, or None to write nothing (the
        current one is returned). It may run several times, so it must not have side effects; it
        may raise to abort (e.g. a state-table refusal), and that exception propagates.
        Raises `NotFound` if the key is absent, `Conflict` after `cas_attempts` lost races.
        """
        key = family.key(name)
        for attempt in sleeps(self._backoff, attempts=self.settings.cas_attempts):
            current = self.get(family, name)
            if current is None:
                raise NotFound(f"{key} does not exist")
            new = change(current.value)
            if new is None:
                return current
            try:
                return self.replace(family, name, new, current.mod_revision, guard=guard)
            except Conflict:
                log.debug("lost compare-and-swap on %s (attempt %d)", key, attempt)
        raise Conflict(
            f"gave up updating {key} after {self.settings.cas_attempts} attempts: other writers kept "
            "changing it; retry later"
        )

    def delete(self, family: Family[R], name: str, *, mod_revision: int | None = None,
               guard: Guard | None = None) -> bool:
        """Delete the key (only if still at `mod_revision`, when given). False if it was absent.
        Raises `Conflict` if it changed since `mod_revision`."""
        key = family.key(name)
        compare = [self._client.transactions.mod(key) == mod_revision] if mod_revision else []
        response = self._txn(compare, [self._client.transactions.delete(key)], guard)
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise Conflict(f"{key} changed since revision {mod_revision}")
        return response.responses[0].response_delete_range.deleted > 0

    def transact(self, writes: list[Put[Any] | Remove[Any]], *, guard: Guard | None = None) -> int:
        """Apply several writes atomically, each under its own expectation; return the revision.

        For keeping records consistent with each other (a VM and the claim on its name, a network
        and the VMs attached to it). Raises `Conflict` naming the first key that was not as expected
        (nothing is written then), or `GuardFailed`.
        """
        tx = self._client.transactions
        compare, success = [], []
        for write in writes:
            key = write.family.key(write.name)
            if write.expect is not None:
                compare.append(tx.mod(key) == write.expect if write.expect else tx.create(key) == 0)
            if isinstance(write, Put):
                success.append(self._put(key, write.family.encode(write.record), write.lease))
            else:
                success.append(tx.delete(key))
        response = self._txn(compare, success, guard)
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            expected = [w for w in writes if w.expect is not None]
            for write, read in zip(expected, response.responses):
                kvs = read.response_range.kvs
                actual = kvs[0].mod_revision if kvs else 0
                if actual != write.expect:
                    key = write.family.key(write.name)
                    raise Conflict(f"{key} already exists" if write.expect == 0
                                   else f"{key} changed since revision {write.expect}", key)
            raise Conflict("a key changed during the transaction")
        return int(response.header.revision)

    def delete_all(self, family: Family[R], within: str) -> int:
        """Delete every key of the family whose name starts with `within` (e.g. one VM's events);
        return how many. `within` must not be empty: a whole family is never deleted this way."""
        if not within:
            raise ValueError("delete_all needs a name prefix")
        prefix = (family.prefix + within).encode()
        with self.unavailable_as_error("delete range"):
            response = self._client.kvstub.DeleteRange(
                rpc_pb2.DeleteRangeRequest(key=prefix, range_end=_prefix_end(prefix)), self._client.timeout,
                credentials=self._client.call_credentials, metadata=self._client.metadata,
            )
        return int(response.deleted)

    # -- leases -----------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        with self.unavailable_as_error("lease grant"):
            return int(self._client.lease(ttl).id)

    def refresh_lease(self, lease_id: int) -> int:
        """Renew the lease; return its remaining TTL, 0 or less if it has already expired."""
        with self.unavailable_as_error("lease keep-alive"):
            for response in self._client.refresh_lease(lease_id):
                return int(response.TTL)
        return 0

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease, deleting every key attached to it. Revoking an expired lease is fine."""
        try:
            with self.unavailable_as_error("lease revoke"):
                self._client.revoke_lease(lease_id)
        except StoreUnavailable:
            raise
        except pyetcd.exceptions.Etcd3Exception:
            pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _put(self, key: str, value: bytes, lease: int | None) -> Any:
        return self._client.transactions.put(key, value, lease=lease)

    def _txn(self, compare: list[Any], success: list[Any], guard: Guard | None) -> Any:
        """One transaction. Its failure branch reads the compared keys, so a caller can tell a
        failed guard from a lost compare-and-swap."""
        transactions = self._client.transactions
        failure = [transactions.get(c.key) for c in compare]
        if guard is not None:
            compare = [*compare, transactions.create(guard.key) == guard.create_revision]
            failure.append(transactions.get(guard.key))
        request = rpc_pb2.TxnRequest(
            compare=[c.build_message() for c in compare],
            success=self._client._ops_to_requests(success),
            failure=self._client._ops_to_requests(failure),
        )
        with self.unavailable_as_error("transaction"):
            return self._client.kvstub.Txn(
                request, self._client.timeout,
                credentials=self._client.call_credentials, metadata=self._client.metadata,
            )

    @staticmethod
    def _raise_guard_failure(response: Any, guard: Guard | None) -> None:
        if guard is None:
            return
        guard_read = response.responses[-1].response_range
        holder = guard_read.kvs[0].create_revision if guard_read.kvs else 0
        if holder != guard.create_revision:
            raise GuardFailed(f"{guard.key} is no longer the one this process holds")


def _matches(value: bytes, where: Mapping[str, str]) -> bool:
    try:
        data = json.loads(value)
    except ValueError:
        return True  # let decoding report it
    return isinstance(data, dict) and all(data.get(k) == v for k, v in where.items())


def _b(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


def _prefix_end(prefix: bytes) -> bytes:
    return pyetcd.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]
