"""How tests make a daemon's follow loop fail: the real `Follower` never raises, so a test wraps it
in one whose iteration raises (as a bug would) when it sees the VM named `poison`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ucloud_common.store import Change, Follower, Snapshot

POISON = "poison"


class PoisonedFollower:
    """Yields what `follower` yields until the change of the VM named `poison`, then raises."""

    def __init__(self, follower: Follower[Any]) -> None:
        self._follower = follower

    def __iter__(self) -> Iterator[Snapshot[Any] | Change[Any]]:
        for item in self._follower:
            if isinstance(item, Change) and item.name == POISON:
                raise RuntimeError(f"a bug, injected by the test: the consumer died on vm={POISON}")
            yield item

    def stop(self) -> None:
        self._follower.stop()


def poisoned(real: Callable[..., Follower[Any]]) -> Callable[..., PoisonedFollower]:
    """A stand-in for the `Follower` class whose followers are poisoned."""

    def make(*args: Any, **kwargs: Any) -> PoisonedFollower:
        return PoisonedFollower(real(*args, **kwargs))

    return make
