"""The console proxy's admission of a ticket (on a real etcd) and the serial log's tail it shows
first; the whole path, with QEMU and a browser, is in tests/e2e/test_console*.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ucloud_common.console import TICKETS, ConsoleKind, ConsoleTicket, new_ticket
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.user import USERS, Role, User
from ucloud_common.vm import VMS, VM, placed_on
from ucloud_vm.console import ConsoleProxyServer, Refused, _tail

UUID = "6d1c0d38-0d5e-4a5e-9f7e-111111111111"


@pytest.fixture
def proxy(store: Store, tmp_path: Path) -> ConsoleProxyServer:
    store.create(USERS, "alice", User(name="alice"))
    store.create(USERS, "root", User(name="root", role=Role.ADMIN))
    store.create(USERS, "bob", User(name="bob"))
    store.create(VMS, UUID, VM(uuid=UUID, owner="alice", name="web", specs=Specs(cpu=1, ram=1, ssd=1), image="tiny",
                               status=Status.RUNNING, **placed_on("h1")))
    return ConsoleProxyServer(store, "h1", tmp_path)


def given(store: Store, user: str, kind: ConsoleKind = ConsoleKind.SERIAL) -> str:
    text, digest = new_ticket()
    store.create(TICKETS, digest, ConsoleTicket(digest=digest, user=user, vm=UUID, host="h1", kind=kind))
    return f"/{kind.value}?ticket={text}"


def test_the_owner_and_an_admin_are_admitted_once_another_user_and_a_deleted_one_never(
        proxy: ConsoleProxyServer, store: Store, tmp_path: Path) -> None:
    for user in ("alice", "root"):
        path = given(store, user)
        vm, kind, paths = proxy.admit(path)
        assert (vm, kind, paths.serial) == (UUID, ConsoleKind.SERIAL, tmp_path / "vms" / UUID / "serial.log")
        with pytest.raises(Refused, match="the ticket was used"):
            proxy.admit(path)
    with pytest.raises(Refused, match="the ticket's user may not see"):
        proxy.admit(given(store, "bob"))
    path = given(store, "alice")
    store.delete(USERS, "alice")  # deleted after the ticket was given
    with pytest.raises(Refused, match="the ticket's user may not see"):
        proxy.admit(path)
    store.update(VMS, UUID, lambda vm: vm.evolve(status=Status.STOPPED))
    with pytest.raises(Refused, match="the VM is STOPPED: start it first"):
        proxy.admit(given(store, "root"))


def test_the_serial_tail_is_the_logs_end_from_a_whole_line(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    assert _tail(log, 64) == b""  # no log yet
    log.write_bytes(b"short\nlog\n")
    assert _tail(log, 64) == b"short\nlog\n"  # all of it: nothing cut
    log.write_bytes(b"".join(b"line %03d\n" % n for n in range(100)))  # 9 bytes a line
    tail = _tail(log, 64)
    assert tail.startswith(b"line 093\n") and tail.endswith(b"line 099\n")  # the cut line is dropped
    log.write_bytes(b"x" * 200)  # one endless line: shown as it is, rather than nothing
    assert _tail(log, 64) == b"x" * 64
