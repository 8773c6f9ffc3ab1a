"""Consoles: one-time tickets (`/v1/console-ticket/<digest>`, written by the API, consumed by a
host's console proxy) and the proxies themselves (`/v1/console-proxy/<host>`, each on its proxy's
lease: present while it serves).

A ticket is 256 random bits, shown once to the user who asked; etcd holds only a digest of it, so
reading etcd gives no usable ticket. It is bound to its user, its VM, the host the VM ran on when it
was asked for and the kind of console, lives on a lease of `TICKET_TTL` seconds, and is consumed by
its first use (a compare-and-swap delete: two connections with one ticket, one wins).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import StrEnum

from ucloud_common.record import Family, Name, Record
from ucloud_common.states import Status

TICKET_TTL = 60
# A VM's consoles (its screen and serial port, and its TCP VNC server for Guacamole) are there in
# these statuses: a paused guest's screen is still worth seeing.
SHOWN = frozenset({Status.RUNNING, Status.SUSPENDED})
_TICKET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


class ConsoleKind(StrEnum):
    VNC = "vnc"  # the screen (RFB over the websocket, as noVNC speaks it)
    SERIAL = "serial"  # the first serial port, interactive (bytes both ways)


class ConsoleTicket(Record):
    digest: Name
    user: Name
    vm: Name
    host: Name
    kind: ConsoleKind


class ConsoleProxy(Record):
    url: str  # where it listens: ws://address:port or wss://address:port


TICKETS: Family[ConsoleTicket] = Family("/v1/console-ticket/", ConsoleTicket, identity="digest")
PROXIES: Family[ConsoleProxy] = Family("/v1/console-proxy/", ConsoleProxy)


def new_ticket() -> tuple[str, str]:
    """A fresh ticket and its digest (the name its record is stored under)."""
    ticket = secrets.token_urlsafe(32)
    return ticket, digest_of(ticket)


def digest_of(ticket: str) -> str:
    """The digest a ticket is stored under; ValueError for anything that is not a ticket's shape
    (so nothing a client sends reaches etcd as a key)."""
    if not _TICKET.fullmatch(ticket):
        raise ValueError("not a console ticket")
    return hashlib.sha256(ticket.encode()).hexdigest()[:48]  # 192 bits: a name fits 63 characters
