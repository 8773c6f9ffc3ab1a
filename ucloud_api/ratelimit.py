"""How fast one user may write. Every accepted write adds an event that etcd keeps for the retention
(`ucloud_common.event`), so a user writing without pause would fill etcd, which then refuses every
write of everyone (its space quota). A moving window per user (the `limits` library) bounds that: past
it a write is refused with 429 and a Retry-After before anything is read or written.

Each API worker counts in its own memory: with W workers a user may write up to W times the limit
(a kept-alive connection stays with one worker). Admins are not limited. A login counts once its
password was found right (`check_login`); wrong ones have their own throttle (`ucloud_api.throttle`).
"""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, g, request
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ucloud_api.auth import Caller
from ucloud_api.errors import APIError

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_EXTENSION = "ucloud.write_limit"


def install(app: Flask, rates: str) -> None:
    """Refuse a user's write past any of `rates` (none: no limit). Runs after authentication."""
    if not rates.strip():
        return
    limit = WriteLimit(rates)
    app.extensions[_EXTENSION] = limit

    @app.before_request
    def limit_writes() -> None:
        caller = g.get("caller")
        if request.method in WRITES and caller is not None:
            limit.check(caller)


def check_login(caller: Caller) -> None:
    """Count a login whose password was right as a write of its user (429 past the rate): it writes a
    token and its event, and the console site's evicts the oldest session to make room, so nothing
    else bounds how often a user who knows their password does it. A wrong password costs nothing
    here, or an attacker guessing would use up the user's room."""
    limit: WriteLimit | None = current_app.extensions.get(_EXTENSION)
    if limit is not None:
        limit.check(caller)


class WriteLimit:
    def __init__(self, rates: str) -> None:
        self._limits = parse_many(rates)  # checked with the settings
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, caller: Caller) -> None:
        """Count one write of `caller`, or refuse it with 429 and Retry-After (an admin: never)."""
        if caller.is_admin:
            return
        # Tested first, counted only if every window has room: a refused write uses up nothing.
        passed = next((limit for limit in self._limits if not self._limiter.test(limit, caller.name)), None)
        if passed is None:
            for limit in self._limits:
                self._limiter.hit(limit, caller.name)
            return
        reset = self._limiter.get_window_stats(passed, caller.name).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise APIError(429, "too_many_writes", f"you wrote {passed} (UCLOUD_USER_WRITE_RATE); retry in {wait} s",
                       headers={"Retry-After": str(wait)}, retry_after=wait)
