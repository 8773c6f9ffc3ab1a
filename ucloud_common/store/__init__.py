"""ucloud's etcd layer: the only code that talks to etcd (and the only code that imports gRPC or
the etcd client library).

`Store` (typed reads and compare-and-swap writes, failing over between members), `Follower` (list,
then watch, relisting when needed, never ending before it is stopped), `KeptLease` (a lease with
its keep-alive) and `Election` (one leader among many). Everything they raise is a `StoreError`.
"""

from ucloud_common.store.contract import AbstractStore, Guard, Listing, Put, Remove, Versioned
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
)
from ucloud_common.store.etcd import Store
from ucloud_common.store.follow import Change, Follower, Snapshot, apply
from ucloud_common.store.lease import KeptLease

__all__ = [
    "AbstractStore", "AlreadyExists", "Change", "Compacted", "Conflict", "Election", "Follower", "Guard", "GuardFailed",
    "KeptLease", "LeaseExpired", "Listing", "NotFound", "Put", "Remove", "Snapshot", "Store", "StoreError",
    "StoreRefused", "StoreUnavailable", "Versioned", "apply",
]
