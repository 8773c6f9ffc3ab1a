"""What the review of the API's read cache found (real etcd): a list must not ask etcd while it holds
a mirror's lock, a revision from the future must not make every read list etcd, and a worker cut off
from etcd must not go on accepting a token revoked meanwhile."""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Any

import pytest
from flask import Flask

from tests.api.conftest import As
from ucloud_api.cache import LAST_EVENTS, ReadCache
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_common.user import TOKENS, USERS
from ucloud_common.vm import VM, VMS


def a_vm(owner: str, name: str) -> VM:
    return VM(uuid=str(uuidlib.uuid4()), owner=owner, name=name, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


def test_a_list_of_vms_with_nics_reads_no_network_from_etcd_under_the_mirrors_lock(
        alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM with NICs is shown with its networks' prefixes. After any write of the caller's that the
    networks' mirror has not passed (a write to a VM: the usual case), each such VM of the page was
    looked up in etcd, one round trip per VM, while the list held the VMs' mirror lock: the watch
    thread and every other reader of VMs waited for a page of up to 1,000 round trips."""
    net = alice.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    for i in range(20):
        alice.create_vm(f"nic{i}", networks=[net])
    alice.create_vm("plain")  # a write the networks' mirror never passes (nobody writes a network after it)
    cache: ReadCache = app.extensions["ucloud.cache"]
    lock = cache.vms._changed
    under_lock: list[str] = []
    real_get = Store.get

    def get(self: Store, family: Any, name: str) -> Any:
        if lock._is_owned():  # type: ignore[attr-defined]
            under_lock.append(f"{family.prefix}{name}")
        return real_get(self, family, name)

    monkeypatch.setattr(Store, "get", get)
    listed = alice.get("/api/v1/vms?limit=100")
    assert listed.status_code == 200 and len(listed.json) == 21
    assert all(vm["networks"][0]["ipv6"] for vm in listed.json if vm["networks"])
    assert under_lock == [], f"{len(under_lock)} etcd reads while holding the VMs' mirror lock"


def test_a_revision_from_the_future_does_not_make_every_list_read_etcd(
        alice: As, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any caller may send any X-Ucloud-Revision. One ahead of etcd is never reached: each list waited
    WAIT_S, then listed the whole family from etcd (10,000 VMs for a user's list of 3) and swapped it
    into the mirror under its lock, request after request."""
    for i in range(3):
        alice.create_vm(f"v{i}")
    listings: list[str] = []
    real_list = Store.list

    def list_(self: Store, family: Any, *args: Any, **kwargs: Any) -> Any:
        listings.append(family.prefix)
        return real_list(self, family, *args, **kwargs)

    monkeypatch.setattr(Store, "list", list_)
    future = {"X-Ucloud-Revision": str(store.revision() + 1_000_000)}
    answers = [alice.get("/api/v1/vms?limit=10", headers=future) for _ in range(5)]
    assert listings.count(VMS.prefix) <= 1, f"{listings.count(VMS.prefix)} listings of every VM for 5 lists"
    # Answered as without the header: a revision no write made is no request's own (and a fuzzer's
    # valid header gets a valid answer).
    assert all(a.status_code == 200 and len(a.json) == 3 for a in answers)
    assert all(int(a.headers["X-Ucloud-Revision"]) <= store.revision() for a in answers)


@pytest.mark.etcd_only("cuts the TCP connection")
def test_a_worker_cut_off_from_etcd_stops_accepting_a_token_revoked_meanwhile(
        etcd_server: Any, settings: Any, store: Store, alice: As) -> None:
    """Token checks read the worker's mirror, with no bound on how old it may be: a worker whose
    watch cannot reach etcd (a partition, a member down behind a proxy) kept accepting a revoked
    token, and serving lists from memory to it, for as long as the cut lasted. Before the cache,
    the same worker refused (it could not read the token)."""
    from tests.api.test_cache import other_app
    from tests.helpers.proxy import CuttableProxy

    proxy = CuttableProxy("127.0.0.1", etcd_server.client_port)
    behind = settings.model_copy(update={"etcd_endpoints": [type(settings.etcd_endpoints[0]).parse(proxy.endpoint)]})
    made = alice.post("/api/v1/tokens", json={"name": "leaked"}).json
    for app, _ in other_app(behind):
        cache: ReadCache = app.extensions["ucloud.cache"]
        elsewhere = As(app.test_client(), made["token"], "alice")
        now, deadline = store.revision(), time.monotonic() + 10
        while not (cache.tokens.wait_for(now, 0.1) and cache.vms.wait_for(now, 0.1)) and time.monotonic() < deadline:
            time.sleep(0.1)  # (a mirror not loaded yet is not waited for)
        assert elsewhere.get("/api/v1/vms").status_code == 200
        proxy.cut()
        try:
            assert alice.delete(f"/api/v1/tokens/{made['id']}").status_code == 204
            deadline = time.monotonic() + 20
            codes = []
            while time.monotonic() < deadline:
                codes.append(elsewhere.get("/api/v1/vms").status_code)
                if codes[-1] != 200:
                    break
                time.sleep(0.5)
            assert codes[-1] != 200, f"the revoked token was still accepted {len(codes)} times over 20 s"
        finally:
            proxy.restore()  # the app stops with etcd reachable
    proxy.cut()


def test_a_long_page_does_not_hold_the_mirror_lock_while_it_renders(
        admin: As, app: Flask, store: Store) -> None:
    """The watch thread takes the same lock as a page: while a page of 1,000 VMs with NICs renders
    each VM under the lock, no change is taken in, and every reader waits."""
    net = admin.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    for i in range(30):
        admin.create_vm(f"nic{i}", networks=[net])
    cache: ReadCache = app.extensions["ucloud.cache"]
    assert cache.vms.wait_for(store.revision(), 10)
    import ucloud_api.views.vms as vms_view

    real = vms_view.shown_one
    held = []

    def shown_one(vm: VM) -> Any:
        held.append(cache.vms._changed._is_owned())  # type: ignore[attr-defined]
        return real(vm)

    vms_view.shown_one = shown_one  # type: ignore[assignment]
    try:
        assert admin.get("/api/v1/vms?limit=1000").status_code == 200
    finally:
        vms_view.shown_one = real  # type: ignore[assignment]
    assert held and not any(held), f"{sum(held)} of {len(held)} VMs rendered under the mirror's lock"




def test_readers_that_need_a_newer_mirror_share_one_listing(
        alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror behind what its readers need (a watch slowed down, reconnecting): each of them
    listed the whole family from etcd, at once, which slows everything further."""
    import threading

    for i in range(3):
        alice.create_vm(f"v{i}")
    cache: ReadCache = app.extensions["ucloud.cache"]
    cache.vms.stop()  # the watch delivers nothing more
    cache.vms.join(5)
    needed = {"X-Ucloud-Revision": str(store.create(VMS, (vm := a_vm("alice", "late")).uuid, vm).mod_revision)}
    listings: list[str] = []
    real_list = Store.list

    def list_(self: Store, family: Any, *args: Any, **kwargs: Any) -> Any:
        listings.append(family.prefix)
        time.sleep(0.3)  # a listing of many VMs
        return real_list(self, family, *args, **kwargs)

    monkeypatch.setattr(Store, "list", list_)
    codes: list[int] = []
    readers = [threading.Thread(target=lambda: codes.append(alice.get("/api/v1/vms", headers=needed).status_code))
               for _ in range(6)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert codes == [200] * 6
    assert listings.count(VMS.prefix) == 1, f"{listings.count(VMS.prefix)} listings for 6 readers"


def test_get_one_vm_dumps_only_the_events_it_shows(
        alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import ucloud_api.views.vms as vms_view
    from ucloud_common.event import EVENTS, Event, Kind, event_name, ref
    from ucloud_common.store import Put

    uuid = alice.create_vm("busy")["uuid"]
    obj = ref(Kind.VM, uuid)
    for batch in range(4):
        store.transact([Put(EVENTS, event_name(obj), Event(object=obj, source="agent h1", message=f"restart {batch}.{i}"), 0)
                        for i in range(50)])
    cache: ReadCache = app.extensions["ucloud.cache"]
    assert cache.events.wait_for(store.revision(), 10)
    dumped: list[Any] = []
    real_dump = vms_view.dump
    monkeypatch.setattr(vms_view, "dump", lambda record: dumped.append(record) or real_dump(record))
    shown = alice.get(f"/api/v1/vms/{uuid}", headers={"X-Ucloud-Revision": str(store.revision())})
    assert shown.status_code == 200 and len(shown.json["events"]) == LAST_EVENTS
    assert shown.json["events"][-1]["message"] == "restart 3.49"
    assert len(dumped) <= LAST_EVENTS + 1, f"{len(dumped)} records dumped for one VM"
    # And the cache holds no more than those: a week of a crash-looping VM's events was all kept.
    assert len(cache.events.table.names("object", obj)) == LAST_EVENTS


def test_the_next_page_is_never_older_than_the_page_before(
        admin: As, app: Flask, store: Store, settings: Any) -> None:
    """Pages are read through any worker. The continue token named only the last VM shown, so the
    next page could come from a worker whose mirror is behind the page before: a VM deleted before
    page 1 was served still showed on page 2, a revision older than page 1's."""
    from tests.api.test_cache import other_app

    names = sorted(store.create(VMS, (vm := a_vm("alice", f"p{i}")).uuid, vm).name for i in range(6))
    for other, _ in other_app(settings):
        behind: ReadCache = other.extensions["ucloud.cache"]
        lagging = As(other.test_client(), admin.token, "admin")
        deadline = time.monotonic() + 10
        while not behind.vms.wait_for(store.revision(), 0.1) and time.monotonic() < deadline:
            time.sleep(0.1)
        behind.vms.stop()  # from here this worker's mirror lags
        behind.vms.join(5)
        doomed = names[-1]
        store.delete(VMS, doomed)
        first = admin.get("/api/v1/vms?limit=3", headers={"X-Ucloud-Revision": str(store.revision())})
        assert first.status_code == 200 and doomed not in {vm["uuid"] for vm in first.json}
        token = first.headers["X-Ucloud-Continue"]
        second = lagging.get(f"/api/v1/vms?limit=3&continue={token}")
        assert second.status_code == 200
        assert int(second.headers["X-Ucloud-Revision"]) >= int(first.headers["X-Ucloud-Revision"])
        assert doomed not in {vm["uuid"] for vm in second.json}, "page 2 showed a VM deleted before page 1"


def test_token_checks_read_etcd_once_for_a_revision_a_client_sends_again_and_again(
        alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: "token checks must not cost an etcd round trip per request". The CLI sends the
    revision of its last write with every later request (and every page of a list): each of them
    read the token and the user from etcd, since those mirrors never reach a VM's write. Now the
    worker reads each once for that revision and keeps what it read."""
    cache: ReadCache = app.extensions["ucloud.cache"]
    alice.create_vm("w")
    revision = {"X-Ucloud-Revision": str(store.revision())}  # (what the CLI sends after its write)
    assert cache.vms.wait_for(store.revision(), 10)
    reads: list[str] = []
    real_read = Store.read
    monkeypatch.setattr(Store, "read", lambda self, family, name: reads.append(family.prefix) or real_read(self, family, name))
    for _ in range(10):
        assert alice.get("/api/v1/vms?limit=10", headers=revision).status_code == 200
    assert sorted(reads) == sorted([TOKENS.prefix, USERS.prefix]), f"{len(reads)} etcd reads for 10 token checks"


def test_reading_one_host_does_not_list_every_vm_from_etcd(
        admin: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /hosts/<name> summed up what the host's VMs take from two listings of every VM in etcd
    (10,000 VMs: two listings of ~27 MB per request), although the read cache holds them."""
    from ucloud_common.host import HOSTS, Host

    store.create(HOSTS, "h1", Host(name="h1", address="127.0.0.1", capacity=Specs(cpu=8, ram=16, ssd=100)))
    for i in range(3):
        store.create(VMS, (vm := a_vm("alice", f"v{i}")).uuid, vm.evolve(hostname=HOSTS.key("h1")))
    cache: ReadCache = app.extensions["ucloud.cache"]
    assert cache.vms.wait_for(store.revision(), 10)
    listings: list[str] = []
    real_list = Store.list

    def list_(self: Store, family: Any, *args: Any, **kwargs: Any) -> Any:
        listings.append(family.prefix)
        return real_list(self, family, *args, **kwargs)

    monkeypatch.setattr(Store, "list", list_)
    shown = admin.get("/api/v1/hosts/h1")
    assert shown.status_code == 200 and shown.json["vms"] == 3, shown.json
    assert VMS.prefix not in listings, f"{listings.count(VMS.prefix)} listings of every VM for one host"
