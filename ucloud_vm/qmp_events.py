"""Hearing from each QEMU when something happens, instead of asking each one every second.

Every QEMU has a second QMP monitor of its own (`VMPaths.qmp_events`): QEMU sends its events to
every monitor, and a QMP socket serves one client at a time, so one long-lived connection here
leaves the command socket free for the driver's short sessions. One asyncio loop in one thread
holds all the connections; each event that can change what the agent decides (the guest powered
off, paused, resumed, reset, panicked, hit a disk error) and the connection's end (the process
exited) wakes the VM's worker, which observes and decides as always. A QEMU that cannot be
followed (one started before it had the socket, one that does not answer) is looked at by the
agent's monitor instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from qemu.qmp import QMPClient, QMPError, Runstate

log = logging.getLogger(__name__)

# QEMU's events after which the agent's decision may differ (a STOP covers io-error and
# guest-panicked pauses; SHUTDOWN with -no-shutdown a guest's own power-off; SUSPEND a guest gone to
# S3; DEVICE_DELETED a NIC the guest let go). The others (RTC_CHANGE, VNC_*, MIGRATION*, …) change
# nothing the agent decides on.
WAKING = frozenset({"SHUTDOWN", "STOP", "RESUME", "RESET", "GUEST_PANICKED", "BLOCK_IO_ERROR", "SUSPEND",
                    "SUSPEND_DISK", "WAKEUP", "DEVICE_DELETED"})
# After a connection that failed, the QEMU is left to the agent's monitor this long, doubling up to
# the most: a QEMU whose events socket refuses (or never greets) must not be asked again on each look.
RETRY_FIRST_S, RETRY_MOST_S = 5.0, 300.0

Wake = Callable[[str], None]


class EventFollower:
    """One connection per followed QEMU, on a loop thread started with the first `follow`."""

    def __init__(self, timeout: float) -> None:
        """`timeout`: seconds a QEMU has to accept and greet."""
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._followed: dict[str, Future[None]] = {}
        self._failed: dict[str, tuple[float, float]] = {}  # uuid → (not before, next wait): monotonic time

    def follow(self, uuid: str, socket: Path, wake: Wake) -> bool:
        """Follow the QEMU of `uuid` on `socket` unless already done; whether it is (being) followed:
        False while a failed connection's wait runs."""
        with self._lock:
            if uuid in self._followed:
                return True
            if uuid in self._failed and time.monotonic() < self._failed[uuid][0]:
                return False
            self._followed[uuid] = asyncio.run_coroutine_threadsafe(self._follow(uuid, socket, wake),
                                                                    self._running_loop())
            return True

    def close(self) -> None:
        """End every connection and the loop (the QEMUs go on, unfollowed)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            for task in asyncio.run_coroutine_threadsafe(_all_tasks(), loop).result(self._timeout):
                loop.call_soon_threadsafe(task.cancel)
            loop.call_soon_threadsafe(loop.stop)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="qmp-events", daemon=True).start()
            self._loop = loop
        return self._loop

    def _ended(self, uuid: str, failed: bool) -> None:
        with self._lock:
            self._followed.pop(uuid, None)
            if failed:
                wait = self._failed.get(uuid, (0.0, RETRY_FIRST_S))[1]
                self._failed[uuid] = (time.monotonic() + wait, min(2 * wait, RETRY_MOST_S))
            else:
                self._failed.pop(uuid, None)

    async def _follow(self, uuid: str, socket: Path, wake: Wake) -> None:
        client = QMPClient(f"ucloud-events-{uuid[:8]}")
        try:
            await asyncio.wait_for(client.connect(str(socket)), self._timeout)
        except (OSError, QMPError, EOFError, asyncio.TimeoutError) as exc:
            # Gone, or alive and silent: the monitor looks at it meanwhile (no wake: a look would
            # only ask to follow it again).
            log.debug("vm=%s: cannot follow QEMU's events at %s: %s", uuid, socket, exc or type(exc).__name__)
            self._ended(uuid, failed=True)
            return
        log.debug("vm=%s: following QEMU's events", uuid)
        try:
            with client.listener() as listener:
                # What happened before the subscription is only seen by looking: once, now.
                wake(uuid)
                ended = asyncio.ensure_future(_disconnected(client))
                while True:
                    event = asyncio.ensure_future(listener.get())
                    done, _ = await asyncio.wait({event, ended}, return_when=asyncio.FIRST_COMPLETED)
                    if event in done and event.result()["event"] in WAKING:
                        log.debug("vm=%s: QEMU says %s", uuid, event.result()["event"])
                        wake(uuid)
                    if ended in done:
                        event.cancel()
                        break
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), self._timeout)
            except (OSError, QMPError, EOFError, asyncio.TimeoutError):
                pass
        # Forgotten before the wake: the look it causes finds nothing followed, and follows a new process.
        self._ended(uuid, failed=False)
        wake(uuid)  # the process exited (or closed its monitor): look now


async def _disconnected(client: QMPClient) -> None:
    while client.runstate is Runstate.RUNNING:
        await client.runstate_changed()


async def _all_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]
