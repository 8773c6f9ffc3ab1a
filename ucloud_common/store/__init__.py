"""ucloud's etcd layer: the only code that talks to etcd (and the only code that imports gRPC or
the etcd client library).

`Store` (typed reads and compare-and-swap writes, failing over between members), `MemoryStore` (the
same contract in memory, for scenario tests in simulated time), both `AbstractStore`s; `Follower` (list,
then watch, relisting when needed, never ending before it is stopped), `KeptLease` (a lease with
its keep-alive) and `Election` (one leader among many). Everything they raise is a `StoreError`.
"""

from ucloud_common.store.contract import AbstractStore, Guard, Listing, Put, Remove, Unchanged, Versioned, Write
from ucloud_common.store.election import Election
from ucloud_common.store.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    GuardFailed,
    LeaseExpired,
    NotFound,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TooLarge,
)
from ucloud_common.store.etcd import Store
from ucloud_common.store.follow import Change, Follower, Snapshot, apply
from ucloud_common.store.lease import KeptLease
from ucloud_common.store.memory import MemoryStore, MemoryWatch

__all__ = [
    "AbstractStore", "AlreadyExists", "Change", "Compacted", "Conflict", "Election", "Follower", "Guard",
    "GuardFailed", "KeptLease", "LeaseExpired", "Listing", "MemoryStore", "MemoryWatch", "NotFound", "Put",
    "Remove", "Snapshot", "Store", "StoreError", "StoreRefused", "StoreUnavailable", "TooLarge", "Unchanged", "Versioned",
    "Write", "apply",
]
