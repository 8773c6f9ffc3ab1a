"""`POST /api/v1/vms/<uuid>/console`: one-time tickets, on a real etcd (the proxy that takes them is
tested end to end in tests/e2e/test_console.py)."""

from __future__ import annotations

from tests.api.conftest import As, set_status
from ucloud_common.console import PROXIES, TICKETS, ConsoleProxy, digest_of
from ucloud_common.states import Status
from ucloud_common.store import Store


def test_a_ticket_is_given_for_a_running_vm_and_etcd_keeps_only_its_digest(alice: As, bob: As, store: Store) -> None:
    vm = alice.create_vm()
    path = f"/api/v1/vms/{vm['uuid']}/console"
    stopped = alice.post(path, json={"type": "serial"})
    assert stopped.status_code == 409 and stopped.json["error"]["message"] == "the VM is REQUESTED_NEW: start it first"
    set_status(store, vm["uuid"], Status.RUNNING)
    no_proxy = alice.post(path, json={"type": "vnc"})
    assert no_proxy.status_code == 503 and "no console proxy runs on host h1" in no_proxy.json["error"]["message"]

    store.create(PROXIES, "h1", ConsoleProxy(url="ws://[2001:db8::1]:6080"))
    given = alice.post(path, json={"type": "serial"})
    assert given.status_code == 201, given.json
    ticket = given.json["ticket"]
    assert given.json["url"] == f"ws://[2001:db8::1]:6080/serial?ticket={ticket}"
    assert given.json["expires_in"] == 60 and given.headers["Cache-Control"] == "no-store"
    record = store.get(TICKETS, digest_of(ticket))
    assert record is not None
    assert (record.value.user, record.value.vm, record.value.host, record.value.kind) == ("alice", vm["uuid"], "h1",
                                                                                         "serial")
    assert all(ticket not in item.value.model_dump_json() for item in store.list(TICKETS).items.values())
    second = alice.post(path, json={"type": "serial"}).json["ticket"]
    assert second != ticket and len(store.list(TICKETS).items) == 2  # each ask, its own ticket

    assert bob.post(path, json={"type": "serial"}).status_code == 404  # another's VM: as if it did not exist
    for body in ({"type": "rdp"}, {}, {"type": "vnc", "x": 1}):
        refused = alice.post(path, json=body)
        assert refused.status_code == 422, body
