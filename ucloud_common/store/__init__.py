"""ucloud's etcd layer: the only code that talks to etcd.

`Store` (typed reads and compare-and-swap writes), `Follower` (list, then watch, relisting when
needed), `KeptLease` (a lease with its keep-alive) and `Election` (one leader among many).
"""

from ucloud_common.store.election import Election
from ucloud_common.store.errors import (
    AlreadyExists,
    Conflict,
    GuardFailed,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from ucloud_common.store.etcd import Guard, Listing, Put, Remove, Store, Versioned
from ucloud_common.store.follow import Change, Follower, Snapshot, apply
from ucloud_common.store.lease import KeptLease

__all__ = [
    "AlreadyExists", "Change", "Conflict", "Election", "Follower", "Guard", "GuardFailed",
    "KeptLease", "Listing", "NotFound", "Put", "Remove", "Snapshot", "Store", "StoreError", "StoreUnavailable",
    "Versioned", "apply",
]
