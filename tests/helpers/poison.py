"""How tests make a daemon's essential thread die: the real `Follower` never ends by itself, so a
test wraps it in one whose consumer side raises (as a bug in the daemon would) when it sees the VM
named `poison`.

Also a wrapper to run a real daemon's command line with its followers poisoned, as a process:
    python -m tests.helpers.poison ucloud-scheduler --config CONF run --name s1
"""

from __future__ import annotations

import sys
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


def main() -> None:
    daemon, args = sys.argv[1], sys.argv[2:]
    if daemon == "ucloud-scheduler":
        import ucloud_scheduler.scheduler
        from ucloud_scheduler.main import cli

        ucloud_scheduler.scheduler.Follower = poisoned(ucloud_scheduler.scheduler.Follower)  # type: ignore[assignment,misc]
    elif daemon == "ucloud-vm":
        import ucloud_vm.agent
        from ucloud_vm.main import cli

        ucloud_vm.agent.Follower = poisoned(ucloud_vm.agent.Follower)  # type: ignore[assignment,misc]
    else:
        raise SystemExit(f"unknown daemon {daemon}")
    cli(args, prog_name=daemon)


if __name__ == "__main__":
    main()
