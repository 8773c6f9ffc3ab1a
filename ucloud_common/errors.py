"""Two kinds of failure, as kopf has them: whoever handles one object (an image, a VM) sorts every
failure into one of these, so the loop knows whether to give up on the object or come back to it.

`PermanentError`: retrying is useless (the input is refused, the object names something that does
not exist): mark the object ERROR with `reason`, which is written for its owner to read.
`TemporaryError`: the world was not ready (Ceph timed out, the disk is full): leave the object as
it is and try again after `delay` seconds, or on the next run of a periodic job; log `reason`.

`classify` sorts any other exception: a full disk is temporary, the rest is unexpected and treated
as permanent for that one object (ERROR, the exception named; the handler logs its traceback) —
and the loop always goes on with the next object.
"""

from __future__ import annotations

import errno

# A full disk or quota is the store's condition, not the object's fault: once space is freed the
# same work succeeds, so it is retried rather than blamed on the object.
TEMPORARY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class PermanentError(Exception):
    """Retrying is useless; `reason` (also `str()`) says why, for the object's `error`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryError(Exception):
    """Retrying later may succeed: leave the object unchanged and retry after `delay` seconds (a
    periodic job simply retries on its next run); `reason` (also `str()`) says what failed."""

    def __init__(self, reason: str, delay: float = 60.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


def classify(exc: Exception) -> PermanentError | TemporaryError:
    """The kind of any failure of one object's work: an error already classed is returned as it is,
    an OSError for a full disk or quota is temporary, anything else is permanent, named by its type
    (it is unexpected: the caller should log its traceback)."""
    if isinstance(exc, PermanentError | TemporaryError):
        return exc
    if isinstance(exc, OSError) and exc.errno in TEMPORARY_ERRNOS:
        return TemporaryError(str(exc))
    return PermanentError(f"unexpected error: {type(exc).__name__}: {exc}")
