"""What the store raises. Callers branch on these, never on gRPC or etcd-client exceptions."""

from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store raises."""


class StoreUnavailable(StoreError):
    """etcd did not answer in time or could not be reached. Nothing can be assumed about a write
    that raised this: it may or may not have been applied. Retrying later is always safe, because
    every write ucloud makes is a compare-and-swap or a create."""


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
