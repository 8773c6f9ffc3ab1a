"""Creating an object whose name is unique per owner: the object and its name claim in one transaction."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ucloud_api.errors import APIError
from ucloud_api.limits import Limit
from ucloud_api.replies import store
from ucloud_common.claim import Claim, owned
from ucloud_common.quota import charging
from ucloud_common.record import Family, R
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.store import Conflict, Put, Versioned, Write
from ucloud_common.vm import NIC, free_slot

_RETRY = Backoff(initial=0.002, maximum=0.1)


def create_named(family: Family[R], claims: Family[Claim], owner: str, name: str, uuid: str,
                 make: Callable[[], tuple[R, Sequence[Write]]], what: str, limit: Limit | None = None) -> Versioned[R]:
    """Create the record `make()` returns under `uuid`, claiming `name` for `owner`, together with
    the other writes `make()` returns (claims, records that must change with it, the owner's usage
    charged by `quota.charged`); 409 if the name is taken, or if `owner` has as many of them as `limit`
    allows (counted by their name claims: one per object, removed with it).

    `make` runs again after a lost race, so that it can re-read what it writes and pick other values
    for its claims (a VXLAN id that another request took meanwhile). A name claim whose holder no longer exists (an
    agent deleted the VM) is taken over.
    """
    claim_name = owned(owner, name)
    if limit is not None:
        limit.check(store().count(claims, owned(owner, "")))
    lost = Conflict("")
    with charging(owner):  # (most creations charge the owner's usage)
        for _ in sleeps(_RETRY, attempts=10):
            record, also = make()
            claim = store().get(claims, claim_name)
            expect = 0
            if claim is not None:
                if store().get(family, claim.value.holder) is not None:
                    raise APIError(409, "exists", f"you already have a {what} named {name}")
                expect = claim.mod_revision
            try:
                revision = store().transact([Put(claims, claim_name, Claim(holder=uuid), expect),
                                             Put(family, uuid, record, 0), *also])
            except Conflict as exc:
                lost = exc
                continue
            return Versioned(uuid, record, revision, revision)
    if lost.key == claims.key(claim_name):
        raise APIError(409, "exists", f"you already have a {what} named {name}")
    # Other creations of the owner kept winning the race for the usage record (`quota.charged`).
    raise APIError(409, "busy", f"your other requests kept changing what you hold; retry creating {what} {name}")


def new_nic(network_uuid: str, beside: tuple[NIC, ...]) -> NIC:
    """A NIC on the network with a fresh MAC (locally administered and unicast, never a vendor's)
    in a PCI slot none of the VM's other NICs, `beside`, has. The MAC's claim (`mac_claim`) makes a
    collision a lost race, retried with another one."""
    octets = [0x02] + [random.randrange(256) for _ in range(5)]
    return NIC(network=network_uuid, mac=":".join(f"{o:02x}" for o in octets), slot=free_slot(beside))
