"""The etcd store: typed access to key families, compare-and-swap, leases, watches.

The contract is `AbstractStore`'s (`contract.py`); how etcd keeps it:
- Every call (reads, transactions, deletes, leases, watches) goes to one member of the cluster
  through one path (`members.Members`): when that member fails (down, restarting, cut off from its
  leader, slower than `etcd_timeout`), the call moves to another member. A read, a lease call or a
  watch is repeated there within the same `etcd_timeout`; a write is repeated only if it certainly
  never reached the failed member. With a majority of members up, the store therefore answers again
  within about one `etcd_timeout` of a member's failure. Measured with three members on loopback,
  kill -9 of the member in use: reads and compare-and-swaps answer again after 9–17 ms when it was
  a follower, after 1.0–1.5 s when it was the raft leader (etcd first elects a new one; its
  --election-timeout is 1 s); see tests/integration/test_failover.py.
- etcd being unreachable or slow raises `StoreUnavailable` after at most `etcd_timeout` (a write
  that raised it may or may not have been applied). The store never retries beyond that, because
  only the caller knows whether it still wants the write.
- etcd refusing a request (malformed, too large, permission denied) raises `StoreRefused`; a write
  naming an expired lease raises `LeaseExpired`. No other exception of gRPC or of the client
  library ever leaves the store (`failures` maps every one of them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyetcd.utils
from pyetcd import Endpoint, MultiEndpointEtcd3Client, Transactions
from pyetcd import transactions as ops
from pyetcd.etcdrpc import rpc_pb2

from ucloud_common.config import Settings
from ucloud_common.record import Family, R
from ucloud_common.store.contract import (
    AbstractStore,
    Guard,
    Listing,
    Put,
    Remove,
    Versioned,
    Write,
    already_exists,
    changed_since,
    check_guard,
    first_conflict,
    listed,
)
from ucloud_common.store.errors import Compacted, LeaseExpired
from ucloud_common.store.members import REQUIRE_LEADER, Members
from ucloud_common.store.watch import WATCH_IDLE_S, Watch

log = logging.getLogger(__name__)

# Keys per range request when listing: a 10,000-VM family is ≈6 MB, more than one answer should
# carry; pages keep each answer and its memory small.
_PAGE = 500
# A listing whose revision is compacted between two of its pages starts over; compaction is
# periodic (minutes apart), so a second collision in a row means something else is wrong.
_LIST_ATTEMPTS = 3


class Store(AbstractStore):
    """`AbstractStore` on an etcd cluster (the module's docstring says how it keeps the contract)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._members = Members(settings)
        self._raw: MultiEndpointEtcd3Client | None = None
        self._tx = Transactions()

    def close(self) -> None:
        self._members.close()
        if self._raw is not None:
            self._raw.close()

    @property
    def endpoint(self) -> str:
        """host:port of the member this store talks to now (it changes when that member fails)."""
        return self._members.current

    @property
    def client(self) -> MultiEndpointEtcd3Client:
        """A raw pyetcd client on the same endpoints, for tests and tools that need what the store
        deliberately does not offer (raw keys, garbage, compaction). ucloud's own code never uses
        it: it has neither the store's failover nor its error mapping."""
        if self._raw is None:
            settings = self.settings
            creds = MultiEndpointEtcd3Client.get_secure_creds(
                str(settings.etcd_ca_cert), str(settings.etcd_cert_key) if settings.etcd_cert_key else None,
                str(settings.etcd_cert_cert) if settings.etcd_cert_cert else None) if settings.etcd_ca_cert else None
            endpoints = [Endpoint(ep.host, ep.port, secure=creds is not None, creds=creds, time_retry=0)
                         for ep in settings.etcd_endpoints]
            self._raw = MultiEndpointEtcd3Client(endpoints=endpoints, timeout=self.settings.etcd_timeout,
                                                 failover=True, user=self.settings.etcd_user,
                                                 password=self.settings.etcd_password)
        return self._raw

    # -- reads ------------------------------------------------------------------------------------

    def revision(self) -> int:
        """The store's current revision."""
        return int(self._range(b"\0", limit=1, what="revision").header.revision)

    def _range(self, key: bytes | str, range_end: bytes | None = None, limit: int = 0,
               revision: int = 0, what: str = "") -> Any:
        request = rpc_pb2.RangeRequest(key=_b(key), limit=limit, revision=revision)
        if range_end is not None:
            request.range_end = range_end
        return self._members.call(
            what or f"read {_b(key).decode(errors='replace')}",
            lambda m, left, metadata: m.kv.Range(request, timeout=left, metadata=metadata), retry_safe=True,
            operation="range")

    def read(self, family: Family[R], name: str) -> tuple[Versioned[R] | None, int]:
        key = family.key(name)
        response = self._range(key)
        revision = int(response.header.revision)
        if not response.kvs:
            return None, revision
        kv = response.kvs[0]
        return Versioned(name, family.decode(key, kv.value), kv.mod_revision, kv.create_revision), revision

    def count(self, family: Family[R], within: str) -> int:
        prefix = (family.prefix + within).encode()
        request = rpc_pb2.RangeRequest(key=prefix, range_end=_prefix_end(prefix), count_only=True)
        response = self._members.call(
            f"count {prefix.decode(errors='replace')}",
            lambda m, left, metadata: m.kv.Range(request, timeout=left, metadata=metadata), retry_safe=True,
            operation="count")
        return int(response.count)

    def unchanged(self, family: Family[R], revision: int) -> tuple[bool, int]:
        prefix = family.prefix.encode()
        end = _prefix_end(prefix)
        # The ranges in one transaction: the present ones at one revision. (Counts come from etcd's
        # index, also at a past revision; etcd reads every key of the range to filter by
        # mod_revision, and sends none of them.)
        request = rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True,
                                                                 revision=revision)),
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True)),
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=prefix, range_end=end, keys_only=True, limit=1,
                                                                 min_mod_revision=revision + 1))])
        response = self._members.call(
            f"check {family.prefix} unchanged", lambda m, left, metadata: m.kv.Txn(request, timeout=left,
                                                                               metadata=metadata),
            retry_safe=True, operation="txn")
        then, now, newer = (r.response_range for r in response.responses)
        return then.count == now.count and not newer.kvs, int(response.header.revision)

    def list(self, family: Family[R], within: str = "", where: Mapping[str, str] | None = None) -> Listing[R]:
        """Every valid record of the family (whose name starts with `within`, and whose top-level
        fields equal `where`), as one consistent snapshot: read in pages, every page at the first
        page's revision. `where` is checked before a record is validated, which is most of the cost
        of a large listing."""
        for attempt in range(1, _LIST_ATTEMPTS + 1):
            try:
                return self._list(family, within, where)
            except Compacted:
                if attempt == _LIST_ATTEMPTS:
                    raise
                log.info("listing %s%s: its revision was compacted between pages; listing again",
                         family.prefix, within)
        raise AssertionError("unreachable")

    def _list(self, family: Family[R], within: str, where: Mapping[str, str] | None) -> Listing[R]:
        prefix = (family.prefix + within).encode()
        end = _prefix_end(prefix)
        items: dict[str, Versioned[R]] = {}
        start, revision = prefix, 0
        while True:
            response = self._range(start, range_end=end, limit=_PAGE, revision=revision,
                                   what=f"list {prefix.decode()}")
            revision = revision or response.header.revision
            for kv in response.kvs:
                record = listed(family, kv.key, kv.value, where)
                if record is None:
                    continue
                name = family.name_of(kv.key)
                items[name] = Versioned(name, record, kv.mod_revision, kv.create_revision)
            if not response.more:
                return Listing(items, revision)
            start = response.kvs[-1].key + b"\0"

    def page(self, family: Family[R], within: str = "", after: str = "", limit: int = 500,
             where: Mapping[str, str] | None = None) -> tuple[list[Versioned[R]], str]:
        prefix = (family.prefix + within).encode()
        # The name to go on after is the last key's, whatever it holds (a bad key is no record, and
        # no name a Family would take): the next page starts right after that key.
        start = (family.prefix + after).encode(errors="surrogateescape") + b"\0" if after else prefix
        response = self._range(start, range_end=_prefix_end(prefix), limit=limit, what=f"list {prefix.decode()}")
        found = []
        for kv in response.kvs:
            record = listed(family, kv.key, kv.value, where)
            if record is not None:
                name = family.name_of(kv.key)
                found.append(Versioned(name, record, kv.mod_revision, kv.create_revision))
        last = response.kvs[-1].key if response.more else family.prefix.encode()
        return found, last[len(family.prefix):].decode(errors="surrogateescape")

    # -- writes -----------------------------------------------------------------------------------

    def create(self, family: Family[R], name: str, record: R, *, lease: int | None = None,
               guard: Guard | None = None) -> Versioned[R]:
        """Store `record` under a new key; `AlreadyExists` if the key exists."""
        key = family.key(name)
        response = self._txn(
            [self._tx.create(key) == 0], [self._put(key, family.encode(record), lease)],
            guard,
        )
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise already_exists(key)
        revision = response.header.revision
        return Versioned(name, record, revision, revision)

    def replace(self, family: Family[R], name: str, record: R, mod_revision: int, *,
                lease: int | None = None, guard: Guard | None = None) -> Versioned[R]:
        """One compare-and-swap: store `record` only if the key is still at `mod_revision`."""
        key = family.key(name)
        response = self._txn(
            [self._tx.mod(key) == mod_revision],
            [self._put(key, family.encode(record), lease), self._tx.get(key)], guard,
        )
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise changed_since(key, mod_revision)
        written = response.responses[1].response_range.kvs[0]
        return Versioned(name, record, written.mod_revision, written.create_revision)

    def delete(self, family: Family[R], name: str, *, mod_revision: int | None = None,
               guard: Guard | None = None) -> bool:
        """Delete the key (only if still at `mod_revision`, when given). False if it was absent.
        Raises `Conflict` if it changed since `mod_revision`."""
        key = family.key(name)
        compare = [self._tx.mod(key) == mod_revision] if mod_revision else []
        response = self._txn(compare, [self._tx.delete(key)], guard)
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise changed_since(key, mod_revision)
        return response.responses[0].response_delete_range.deleted > 0

    def transact(self, writes: list[Write], *, guard: Guard | None = None) -> int:
        """Apply several writes atomically, each under its own expectation; return the revision.

        For keeping records consistent with each other (a VM and the claim on its name, a network
        and the VMs attached to it). Raises `Conflict` naming the first key that was not as expected
        (nothing is written then), or `GuardFailed`.
        """
        tx = self._tx
        compare, success = [], []
        for write in writes:
            key = write.family.key(write.name)
            if write.expect is not None:
                compare.append(tx.mod(key) == write.expect if write.expect else tx.create(key) == 0)
            if isinstance(write, Put):
                success.append(self._put(key, write.family.encode(write.record), write.lease))
            elif isinstance(write, Remove):
                success.append(tx.delete(key))
        response = self._txn(compare, success, guard)
        if not response.succeeded:
            self._raise_guard_failure(response, guard)
            raise first_conflict(writes, (r.response_range.kvs[0].mod_revision if r.response_range.kvs else 0
                                          for r in response.responses))
        return int(response.header.revision)

    def delete_all(self, family: Family[R], within: str) -> int:
        """Delete every key of the family whose name starts with `within` (e.g. one VM's events);
        return how many. `within` must not be empty: a whole family is never deleted this way.
        Deleting again deletes nothing more, so this is repeated on another member when one fails
        (the count then misses what a lost first attempt deleted)."""
        if not within:
            raise ValueError("delete_all needs a name prefix")
        prefix = (family.prefix + within).encode()
        request = rpc_pb2.DeleteRangeRequest(key=prefix, range_end=_prefix_end(prefix))
        response = self._members.call(
            f"delete range {prefix.decode()}",
            lambda m, left, metadata: m.kv.DeleteRange(request, timeout=left, metadata=metadata), retry_safe=True,
            operation="delete_range")
        return int(response.deleted)

    # -- raw keys (the leader key holds a bare name, not a record) --------------------------------

    def create_key(self, key: str, value: str, lease: int) -> tuple[bool, int, str]:
        """Create `key` holding `value` on `lease` if it is absent. Returns (created, revision,
        holder): the revision of the creation if created, else the value found in the key."""
        response = self._txn([self._tx.create(key) == 0], [self._put(key, value.encode(), lease)], None)
        if response.succeeded:
            return True, int(response.header.revision), value
        found = response.responses[0].response_range.kvs
        return False, int(response.header.revision), found[0].value.decode(errors="replace") if found else ""

    def read_key(self, key: str) -> tuple[str | None, int]:
        """The value of a raw key (None if absent), and the store revision it was read at."""
        response = self._range(key)
        value = response.kvs[0].value.decode(errors="replace") if response.kvs else None
        return value, int(response.header.revision)

    # -- leases -----------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds. Repeated on another member when one fails: a lease granted
        by a lost first attempt is attached to nothing and expires after its TTL."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl)
        response = self._members.call(
            "lease grant", lambda m, left, metadata: m.lease.LeaseGrant(request, timeout=left, metadata=metadata),
            retry_safe=True, operation="lease_grant")
        return int(response.ID)

    def refresh_lease(self, lease_id: int) -> int:
        """Renew the lease; return its remaining TTL, 0 or less if it has already expired. Only a
        member that has a leader renews (etcd's "hasleader"): a renewal never seems to succeed on a
        member cut off from the cluster."""
        request = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)

        def keep_alive(m: Any, left: float, metadata: Any) -> int:
            for response in m.lease.LeaseKeepAlive(iter([request]), timeout=left,
                                                   metadata=metadata + REQUIRE_LEADER):
                return int(response.TTL)
            return 0

        return self._members.call(f"lease keep-alive {lease_id:x}", keep_alive, retry_safe=True,
                                   operation="lease_keepalive")

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease, deleting every key attached to it. Revoking an expired lease is fine."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        try:
            self._members.call(
                f"lease revoke {lease_id:x}",
                lambda m, left, metadata: m.lease.LeaseRevoke(request, timeout=left, metadata=metadata),
                retry_safe=True, operation="lease_revoke")
        except LeaseExpired:
            pass

    # -- watches ----------------------------------------------------------------------------------

    def watch(self, key: bytes, range_end: bytes | None, start_revision: int, idle: float = WATCH_IDLE_S) -> Watch:
        """Watch [key, range_end) from `start_revision`, on a healthy member (see `Watch`).
        Raises `StoreUnavailable` if no member confirms the watch within `etcd_timeout`, and
        `Compacted` if `start_revision` is no longer kept."""
        return Watch(self._members, key, range_end, start_revision, idle)

    # -- plumbing ---------------------------------------------------------------------------------

    def _put(self, key: str, value: bytes, lease: int | None) -> Any:
        return self._tx.put(key, value, lease=lease)

    def _txn(self, compare: list[Any], success: list[Any], guard: Guard | None) -> Any:
        """One transaction. Its failure branch reads the compared keys, so a caller can tell a
        failed guard from a lost compare-and-swap. Not repeated after a failure that may have
        reached a member (see the module's contract)."""
        failure = [self._tx.get(c.key) for c in compare]
        if guard is not None:
            compare = [*compare, self._tx.create(guard.key) == guard.create_revision]
            failure.append(self._tx.get(guard.key))
        request = rpc_pb2.TxnRequest(
            compare=[c.build_message() for c in compare],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        keys = ", ".join(sorted({_b(c.key).decode(errors="replace") for c in compare})) or "no compare"
        return self._members.call(
            f"transaction ({keys})", lambda m, left, metadata: m.kv.Txn(request, timeout=left, metadata=metadata),
            retry_safe=False, operation="txn")

    @staticmethod
    def _raise_guard_failure(response: Any, guard: Guard | None) -> None:
        if guard is None:
            return
        guard_read = response.responses[-1].response_range
        check_guard(guard, guard_read.kvs[0].create_revision if guard_read.kvs else 0)


def _request_op(op: Any) -> rpc_pb2.RequestOp:
    """pyetcd's transaction operation as etcd's request."""
    if isinstance(op, ops.Put):
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=_b(op.key), value=_b(op.value), lease=op.lease or 0))
    if isinstance(op, ops.Get):
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_b(op.key)))
    if isinstance(op, ops.Delete):
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=_b(op.key)))
    raise TypeError(f"no etcd request for {op!r}")


def _b(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


def _prefix_end(prefix: bytes) -> bytes:
    return pyetcd.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]
