"""Failed logins, counted per user and per source address in etcd, so that every API worker and
every API process sees the same counts: the Nth wrong password within `login_window` seconds shuts
that user, and that address, out (429 with Retry-After) until the window ends.

A count lives on its own etcd lease of `login_window` seconds, granted with its first failure, so
etcd forgets it when the window ends and an attacker's stream of names or addresses costs at most
one small key per name or address per window. The window is fixed (it starts at the first failure),
not sliding: at most `login_failures` guesses per window and name or address, which is the bound
that matters. A correct password clears its user's count (not its address's, or one account the
attacker owns would reset the count of the address it guesses others' passwords from).
"""

from __future__ import annotations

import math
import re

from pydantic import Field

from ucloud_api.errors import APIError
from ucloud_common import clock
from ucloud_common.record import Family, Record
from ucloud_common.store import AlreadyExists, NotFound, Store


class Failures(Record):
    count: int = Field(ge=1)
    since: float  # when the window began (the first failure), seconds since the epoch


FAILURES: Family[Failures] = Family("/v1/login-failures/", Failures)  # user:<name> | address:<address>

_NOT_IN_A_KEY = re.compile(r"[^A-Za-z0-9_.:@-]")


def subjects(user: str, address: str) -> list[str]:
    """The counts one login attempt is held to. (An IPv6 zone, `fe80::1%eth0`, cannot be in a key.)"""
    return [f"user:{user}", "address:" + _NOT_IN_A_KEY.sub("-", address).replace("..", ".-")]


def check_not_shut_out(store: Store, keys: list[str]) -> None:
    """429 while any of `keys` has had `login_failures` failures within the window."""
    settings = store.settings
    for key in keys:
        failures = store.get(FAILURES, key)
        if failures is None or failures.value.count < settings.login_failures:
            continue
        left = failures.value.since + settings.login_window - clock.now()
        if left > 0:
            what = "this user" if key.startswith("user:") else "your address"
            raise APIError(429, "too_many_failures", f"too many wrong passwords for {what}: logins are refused for "
                           f"{math.ceil(left)} s more", headers={"Retry-After": str(math.ceil(left))})


def count_failure(store: Store, keys: list[str]) -> None:
    for key in keys:
        try:
            store.update(FAILURES, key, lambda f: _counted(f, store.settings.login_window))
        except NotFound:
            lease = store.grant_lease(store.settings.login_window)
            try:
                store.create(FAILURES, key, Failures(count=1, since=clock.now()), lease=lease)
            except AlreadyExists:  # another worker counted a failure first: count on top of it
                store.revoke_lease(lease)
                store.update(FAILURES, key, lambda f: _counted(f, store.settings.login_window))


def _counted(failures: Failures, window: int) -> Failures:
    # The window is over but its lease not yet gone (etcd expires leases a little late): a new window.
    # It is still on the old lease, so this one count may go early; a guess or two, not a bypass.
    if failures.since + window <= clock.now():
        return failures.evolve(count=1, since=clock.now())
    return failures.evolve(count=failures.count + 1)


def clear(store: Store, key: str) -> None:
    store.delete(FAILURES, key)
