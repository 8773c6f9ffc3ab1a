"""What the store raises. Callers branch on these, never on gRPC or etcd-client exceptions: every
failure of the client library becomes one of these (`ucloud_common.store.failures` says which)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store raises."""


class StoreUnavailable(StoreError):
    """etcd did not answer in time or could not be reached. Nothing can be assumed about a write
    that raised this: it may or may not have been applied. Retrying later is always safe, because
    every write ucloud makes is a compare-and-swap or a create."""


class StoreRefused(StoreError):
    """etcd refused the request itself and applied nothing: the request is malformed or too large
    for etcd (a bug in ucloud), or this client lacks a permission or valid credentials (a
    configuration error). Retrying the same request will not help; the message says what etcd
    objected to."""


class TooLarge(StoreRefused):
    """etcd refused a write as larger than it takes in one request (`--max-request-bytes`, 1.5 MiB
    by default; beyond it plus 0.5 MiB, gRPC's own message limit): nothing was written, and the same
    write will never fit. Its message names the limit."""


class LeaseExpired(StoreRefused):
    """A write or renewal named a lease that etcd no longer has (it expired or was revoked):
    nothing was written. The keys that were attached to it are gone; start over with a new lease."""


class Compacted(StoreError):
    """A read or watch asked for a revision that etcd has already compacted away. Nothing is wrong
    with etcd: list again at the current revision (`Follower` does so by itself)."""

    def __init__(self, message: str, compacted_revision: int = 0) -> None:
        super().__init__(message)
        self.compacted_revision = compacted_revision


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare-and-swap lost (or kept losing): another writer changed `key`."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class GuardFailed(StoreError):
    """The write's guard no longer holds (e.g. this process is no longer the leader): it was not
    applied, and retrying will not help until the guard is re-established."""
