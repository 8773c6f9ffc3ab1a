"""How fast one user may write. Every accepted write adds an event that etcd keeps for the retention
(`ucloud_common.event`), so a user writing without pause would fill etcd, which then refuses every
write of everyone (its space quota). A moving window per user (the `limits` library) bounds that: past
it a write is refused with 429 and a Retry-After before anything is read or written.

Each API worker counts in its own memory: with W workers a user may write up to W times the limit
(a kept-alive connection stays with one worker). Admins are not limited; nor is `POST /login`,
which has its own throttle (`ucloud_api.throttle`).
"""

from __future__ import annotations

import math
import time

from flask import Flask, g, request
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ucloud_api.errors import APIError

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def install(app: Flask, rates: str) -> None:
    """Refuse a user's write past any of `rates` (none: no limit). Runs after authentication."""
    if not rates.strip():
        return
    limits = parse_many(rates)  # checked with the settings
    limiter = MovingWindowRateLimiter(MemoryStorage())

    @app.before_request
    def limit_writes() -> None:
        caller = g.get("caller")
        if request.method not in WRITES or caller is None or caller.is_admin:
            return
        # Tested first, counted only if every window has room: a refused write uses up nothing.
        passed = next((limit for limit in limits if not limiter.test(limit, caller.name)), None)
        if passed is None:
            for limit in limits:
                limiter.hit(limit, caller.name)
            return
        reset = limiter.get_window_stats(passed, caller.name).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise APIError(429, "too_many_writes", f"you wrote {passed} (UCLOUD_USER_WRITE_RATE); retry in {wait} s",
                       headers={"Retry-After": str(wait)}, retry_after=wait)
