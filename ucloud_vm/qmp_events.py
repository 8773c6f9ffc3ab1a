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
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from qemu.qmp import QMPClient, QMPError, Runstate

log = logging.getLogger(__name__)

# QEMU's events after which the agent's decision may differ (a STOP covers io-error and
# guest-panicked pauses; SHUTDOWN with -no-shutdown a guest's own power-off).
WAKING = frozenset({"SHUTDOWN", "STOP", "RESUME", "RESET", "GUEST_PANICKED", "BLOCK_IO_ERROR"})
CONNECT_TIMEOUT_S = 5.0

Wake = Callable[[str], None]


class EventFollower:
    """One connection per followed QEMU, on a loop thread started with the first `follow`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._followed: dict[str, Future[None]] = {}

    def following(self, uuid: str) -> bool:
        with self._lock:
            current = self._followed.get(uuid)
            return current is not None and not current.done()

    def follow(self, uuid: str, socket: Path, wake: Wake) -> None:
        """Follow the QEMU of `uuid` on `socket`, unless already done."""
        with self._lock:
            current = self._followed.get(uuid)
            if current is None or current.done():
                self._followed[uuid] = asyncio.run_coroutine_threadsafe(self._follow(uuid, socket, wake),
                                                                        self._running_loop())

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="qmp-events", daemon=True).start()
            self._loop = loop
        return self._loop

    async def _follow(self, uuid: str, socket: Path, wake: Wake) -> None:
        client = QMPClient(f"ucloud-events-{uuid[:8]}")
        try:
            await asyncio.wait_for(client.connect(str(socket)), CONNECT_TIMEOUT_S)
        except (OSError, QMPError, EOFError, asyncio.TimeoutError) as exc:
            # Gone, or alive and silent: the worker's look tells which (and the monitor looks at
            # it meanwhile, as this follow has ended).
            log.debug("vm=%s: cannot follow QEMU's events at %s: %s", uuid, socket, exc or type(exc).__name__)
            wake(uuid)
            return
        log.debug("vm=%s: following QEMU's events", uuid)
        try:
            with client.listener() as listener:
                ended = asyncio.ensure_future(_disconnected(client))
                while True:
                    event = asyncio.ensure_future(listener.get())
                    done, _ = await asyncio.wait({event, ended}, return_when=asyncio.FIRST_COMPLETED)
                    if event in done and event.result()["event"] in WAKING:
                        log.debug("vm=%s: QEMU says %s", uuid, event.result()["event"])
                        wake(uuid)
                    if ended in done:
                        event.cancel()
                        wake(uuid)  # the process exited (or closed its monitor): look now
                        return
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), CONNECT_TIMEOUT_S)
            except (OSError, QMPError, EOFError, asyncio.TimeoutError):
                pass


async def _disconnected(client: QMPClient) -> None:
    while client.runstate is Runstate.RUNNING:
        await client.runstate_changed()
