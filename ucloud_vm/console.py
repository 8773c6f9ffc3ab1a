"""A host's console proxy: websocket ↔ a VM's VNC socket (its screen, for noVNC) or serial socket
(its first serial port, for a terminal), for whoever holds a one-time ticket (`ucloud_common.console`).

Its own process beside the agent (`ucloud-vm console-proxy`), not part of it: it holds long-lived
connections on an event loop while the agent is threads that reconcile, and either can be restarted
without the other (a new agent keeps consoles open; a new proxy drops them, nothing else).

A connection is `/<vnc|serial>?ticket=…`. It is admitted only if the ticket exists, is of that kind,
was given for this host, its VM is still placed here and running or suspended, and its user still
exists and owns the VM (or is an admin); admitting it consumes it. A serial console starts with the
end of the serial log, so what the guest wrote before the connection (its boot) is seen too. Anything else is closed with code 4403 (4503 if etcd cannot be asked) and a reason. The
ticket is never logged: the log names the VM, the kind and the peer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from ucloud_common.console import PROXIES, SHOWN, TICKETS, ConsoleKind, ConsoleProxy, digest_of
from ucloud_common.store import AbstractStore, AlreadyExists, Conflict, NotFound, StoreError
from ucloud_common.user import USERS, Role
from ucloud_common.vm import VMS
from ucloud_vm.paths import VMPaths

log = logging.getLogger(__name__)

REFUSED = 4403  # application close codes (4000–4999): the ticket is not good here
UNAVAILABLE = 4503  # etcd could not be asked: try again with a new ticket
_CHUNK = 64 * 1024
_RFB_VERSION = 12  # "RFB 003.008\n": what a VNC server says first
_SERIAL_TAIL = 16 * 1024  # of the serial log, shown first: a screenful or two of what came before


class Refused(Exception):
    def __init__(self, reason: str, code: int = REFUSED) -> None:
        super().__init__(reason)
        self.code = code


class ConsoleProxyServer:
    def __init__(self, store: AbstractStore, host: str, run_dir: Path) -> None:
        self._store = store
        self._host = host
        self._run_dir = run_dir
        self._connecting: dict[Path, asyncio.Lock] = {}  # per VNC socket: see `_connect`

    def admit(self, path: str) -> tuple[str, ConsoleKind, VMPaths]:
        """The VM, kind and the VM's files for a connection to `path`, its ticket consumed; Refused
        with the reason otherwise. Blocking (etcd): run it off the event loop."""
        parts = urlsplit(path)
        try:
            kind = ConsoleKind(parts.path.strip("/"))
        except ValueError:
            raise Refused("no such console: connect to /vnc or /serial") from None
        tickets = parse_qs(parts.query).get("ticket", [])
        try:
            digest = digest_of(tickets[0] if len(tickets) == 1 else "")
        except ValueError:
            raise Refused("no ticket: ask POST /api/v1/vms/<uuid>/console for one") from None
        try:
            found = self._store.get(TICKETS, digest)
            if found is None:
                raise Refused("the ticket was used, has expired, or was never given")
            ticket = found.value
            if ticket.kind is not kind:
                raise Refused(f"the ticket is for the {ticket.kind} console")
            if ticket.host != self._host:
                raise Refused(f"the ticket is for host {ticket.host}, this is {self._host}")
            vm = self._store.get(VMS, ticket.vm)
            if vm is None or vm.value.host != self._host:
                raise Refused(f"VM {ticket.vm} no longer runs on this host: ask for a new ticket")
            user = self._store.get(USERS, ticket.user)
            if user is None or (user.value.role is not Role.ADMIN and vm.value.owner != ticket.user):
                raise Refused(f"the ticket's user may not see VM {ticket.vm}")
            if vm.value.status not in SHOWN:
                raise Refused(f"the VM is {vm.value.status}: start it first")
            try:  # consumed: of two connections with one ticket, one wins
                self._store.delete(TICKETS, digest, mod_revision=found.mod_revision)
            except (Conflict, NotFound):
                raise Refused("the ticket was used") from None
        except StoreError as exc:
            raise Refused(f"etcd did not answer ({exc}); try again with a new ticket", UNAVAILABLE) from None
        return ticket.vm, kind, VMPaths.of(self._run_dir, ticket.vm)

    async def _connect(self, socket: Path, kind: ConsoleKind) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A connection to the VM's socket, and (VNC) the server's greeting read from it. QEMU listens
        with a backlog of one: two connections queued at once, and the second fails on its first read
        (EINVAL). So connections to one VNC socket are made one at a time, each until QEMU has
        accepted it and greeted."""
        if kind is not ConsoleKind.VNC:
            reader, writer = await asyncio.open_unix_connection(socket)
            return reader, writer, b""
        lock = self._connecting.setdefault(socket, asyncio.Lock())
        async with lock:
            reader, writer = await asyncio.open_unix_connection(socket)
            try:
                greeting = await asyncio.wait_for(reader.readexactly(_RFB_VERSION), 10)
            except BaseException:
                writer.close()
                raise
        if not lock.locked():
            self._connecting.pop(socket, None)
        return reader, writer, greeting

    async def handle(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        try:
            vm, kind, paths = await asyncio.to_thread(self.admit, connection.request.path)
        except Refused as refused:
            log.info("console from %s refused: %s", peer, refused)
            await connection.close(refused.code, str(refused))
            return
        socket = paths.vnc if kind is ConsoleKind.VNC else paths.serial_socket
        try:
            reader, writer, greeting = await self._connect(socket, kind)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            log.warning("vm=%s %s console from %s: %s: %s", vm, kind, peer, socket, exc)
            await connection.close(REFUSED, f"the VM's {kind} console does not answer")
            return
        log.info("vm=%s %s console opened for %s", vm, kind, peer)
        try:
            if kind is ConsoleKind.SERIAL:
                # What the guest said before anyone looked (its boot, its login prompt): from the log,
                # read after connecting so that nothing falls between the two (a line may show twice).
                if recent := await asyncio.to_thread(_tail, paths.serial, _SERIAL_TAIL):
                    await connection.send(recent)
            if greeting:
                await connection.send(greeting)
            await _pipe(connection, reader, writer)
        finally:
            writer.close()
            log.info("vm=%s %s console from %s closed", vm, kind, peer)


def _tail(log_file: Path, size: int) -> bytes:
    """The last `size` bytes of the file, from the first line that begins in them."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            data = f.read(size)
    except OSError:
        return b""
    if len(data) == size and b"\n" in data:
        data = data[data.index(b"\n") + 1:]
    return data


async def _pipe(connection: ServerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side ends; the other is ended then."""

    async def to_vm() -> None:
        async for message in connection:
            writer.write(message.encode() if isinstance(message, str) else message)
            await writer.drain()

    async def from_vm() -> None:
        while data := await reader.read(_CHUNK):
            await connection.send(data)

    tasks = [asyncio.create_task(to_vm()), asyncio.create_task(from_vm())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await connection.close(1000, "the console ended")


def _subprotocol(connection: ServerConnection, offered: list[str]) -> str | None:
    # noVNC may offer "binary" (older versions insist on it); a plain websocket client offers none.
    return "binary" if "binary" in offered else None


async def serve_consoles(proxy: ConsoleProxyServer, bind: str, port: int,
                         tls: ssl.SSLContext | None, stop: asyncio.Event) -> None:
    async with serve(proxy.handle, bind, port, ssl=tls, select_subprotocol=_subprotocol,
                     # A VNC screen update can be large; a client's own messages are small.
                     max_size=2**20, ping_interval=20, ping_timeout=20) as server:
        _log_listening(server)
        await stop.wait()


def _log_listening(server: Server) -> None:
    for sock in server.sockets:
        log.info("console proxy listening on %s", sock.getsockname())


def proxy_url(address: str, port: int, tls: bool) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{'wss' if tls else 'ws'}://{host}:{port}"


def register(store: AbstractStore, host: str, url: str, lease: int) -> None:
    """Say where this host's proxy listens, on its lease (gone when the proxy is)."""
    try:
        store.create(PROXIES, host, ConsoleProxy(url=url), lease=lease)
    except AlreadyExists:  # a registration of an earlier proxy whose lease has not expired yet
        store.delete(PROXIES, host)
        store.create(PROXIES, host, ConsoleProxy(url=url), lease=lease)

