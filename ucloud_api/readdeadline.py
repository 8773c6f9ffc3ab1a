"""The read deadline of the request this thread serves, as the app sees it.

The API's gunicorn worker (`ucloud_api.worker`) gives a request UCLOUD_API_READ_TIMEOUT seconds to
arrive whole, so that a slow client never holds a thread for long. An upload may take hours, though:
while the app reads a body it means to stream, it calls `still_reading()` after each block, which
moves the deadline to UCLOUD_API_READ_TIMEOUT from now. So a client is cut off once it sends nothing
(or less than a block) for that long, never for sending a large body steadily. Outside that worker
(a test client, another server) nothing is bound and `still_reading()` does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_local = threading.local()


def bind(extend: Callable[[], None] | None) -> None:
    """The worker: `extend` moves this thread's request's deadline (None: no request any more)."""
    _local.extend = extend


def still_reading() -> None:
    """The app: a block of the body arrived; the client gets another read timeout for the next."""
    extend: Callable[[], None] | None = getattr(_local, "extend", None)
    if extend is not None:
        extend()
