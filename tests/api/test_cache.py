"""Lists from the worker's watch-fed cache, on a real etcd: pages in key order through a changing
family, opaque continue tokens, the revision header, reading one's own writes (also through
another app instance), a relist after compaction, owners kept apart, and tokens revoked
elsewhere refused as soon as the watch says so."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.api.conftest import As, seen
from tests.helpers.etcd import EtcdServer
from tests.helpers.proxy import CuttableProxy
from ucloud_api.app import create_app
from ucloud_api.cache import ReadCache
from ucloud_common.config import Settings
from ucloud_common.network import NETWORKS
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_common.vm import VM, VMS


def a_vm(owner: str, name: str) -> VM:
    return VM(uuid=str(uuidlib.uuid4()), owner=owner, name=name, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


def pages(who: As, path: str, limit: int, headers: dict[str, str] | None = None,
          between: Any = None) -> Iterator[list[dict[str, Any]]]:
    """Every page of a list, following X-Ucloud-Continue (calling `between` after each page)."""
    token = None
    while True:
        query = f"?limit={limit}" + (f"&continue={token}" if token else "")
        response = who.get(path + query, headers=headers)
        assert response.status_code == 200, response.json
        yield response.json
        if between:
            between()
        token = response.headers.get("X-Ucloud-Continue")
        if token is None:
            return


def other_app(settings: Settings) -> Iterator[tuple[Flask, Store]]:
    store = Store(settings)
    app = create_app(settings, store)
    app.testing = False
    try:
        yield app, store
    finally:
        app.extensions["ucloud.cache"].stop()
        store.close()


@pytest.fixture
def second(settings: Settings) -> Iterator[tuple[Flask, Store]]:
    """Another API process on the same etcd (another gunicorn worker, another machine)."""
    yield from other_app(settings)


def test_paging_through_vms_created_and_deleted_meanwhile(admin: As, store: Store) -> None:
    survivors = {store.create(VMS, vm.uuid, vm).name for vm in (a_vm("alice", f"s{i}") for i in range(40))}
    doomed = [store.create(VMS, vm.uuid, vm).name for vm in (a_vm("bob", f"d{i}") for i in range(20))]
    made: list[str] = []

    def churn() -> None:
        # Between two pages, another client deletes VMs and creates new ones (before and after
        # the page's last key: a new key may sort anywhere).
        for _ in range(3):
            if doomed:
                store.delete(VMS, doomed.pop())
            vm = a_vm("bob", f"n{len(made)}")
            made.append(store.create(VMS, vm.uuid, vm).name)

    read = list(pages(admin, "/api/v1/vms", 7, seen(store), churn))
    # At least the 40 survivors; how many others depends on where the random uuids sort.
    assert len(read) >= 6 and all(len(page) <= 7 for page in read)
    shown = [vm["uuid"] for page in read for vm in page]
    assert len(shown) == len(set(shown)), "a VM was shown twice"
    assert survivors <= set(shown), "a VM that existed throughout was not shown"
    assert shown == sorted(shown)


def test_pages_and_their_revision(alice: As, store: Store) -> None:
    for i in range(5):
        alice.create_vm(f"v{i}")
    first = alice.get("/api/v1/vms?limit=2")
    assert first.status_code == 200 and len(first.json) == 2
    assert int(first.headers["X-Ucloud-Revision"]) <= store.revision()
    every = [vm["name"] for page in pages(alice, "/api/v1/vms", 2) for vm in page]
    assert sorted(every) == [f"v{i}" for i in range(5)]
    last = alice.get("/api/v1/vms?limit=5")
    assert "X-Ucloud-Continue" not in last.headers  # nothing follows


@pytest.mark.parametrize("query", [
    "continue=x", "continue=e30", "continue=eyJhZnRlciI6IDF9",  # {} and {"after": 1}
    "continue=eyJhZnRlciI6ICIuLi8ifQ",  # {"after": "../"}: no name
    "limit=0", "limit=1001", "limit=-1", "limit=ten", "limit=²",
])
@pytest.mark.parametrize("path", ["/api/v1/vms", "/api/v1/networks", "/api/v1/images", "/api/v1/files"])
def test_a_bad_page_request_is_a_400(alice: As, path: str, query: str) -> None:
    response = alice.get(f"{path}?{query}")
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "bad_request"


def test_a_bad_revision_header_is_a_400(alice: As) -> None:
    response = alice.get("/api/v1/vms", headers={"X-Ucloud-Revision": "yesterday"})
    assert response.status_code == 400 and "X-Ucloud-Revision" in response.json["error"]["message"]


def test_a_list_after_ones_own_write_shows_it(alice: As) -> None:
    for i in range(10):
        created = alice.post("/api/v1/vms", json={"name": f"w{i}", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                                  "image": "tiny"})
        assert int(created.headers["X-Ucloud-Revision"]) >= int(created.headers["ETag"].strip('"'))
        assert created.json["uuid"] in {vm["uuid"] for vm in alice.get("/api/v1/vms").json}
        assert alice.delete(f"/api/v1/vms/{created.json['uuid']}").status_code == 204
        assert created.json["uuid"] not in {vm["uuid"] for vm in alice.get("/api/v1/vms").json}


def test_a_write_through_one_instance_is_read_through_another_with_its_revision(
        alice: As, second: tuple[Flask, Store]) -> None:
    other = As(second[0].test_client(), alice.token, "alice")
    for i in range(5):
        created = alice.post("/api/v1/networks", json={"name": f"n{i}"})
        revision = {"X-Ucloud-Revision": created.headers["X-Ucloud-Revision"]}
        assert created.json["uuid"] in {n["uuid"] for n in other.get("/api/v1/networks", headers=revision).json}
        deleted = alice.delete(f"/api/v1/networks/{created.json['uuid']}")
        revision = {"X-Ucloud-Revision": deleted.headers["X-Ucloud-Revision"]}
        assert created.json["uuid"] not in {n["uuid"] for n in other.get("/api/v1/networks", headers=revision).json}


def test_a_quiet_familys_list_after_a_write_to_another_is_answered_without_listing_it(
        alice: As, second: tuple[Flask, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller wrote a VM, then lists networks through another worker with the VM's revision: the
    networks mirror never reaches it (nobody writes networks). It waited, then listed the family
    from etcd; etcd now says the family did not change since the mirror's revision."""
    import ucloud_api.cache as cache_module

    monkeypatch.setattr(cache_module, "QUIET_S", 0.2)
    other = As(second[0].test_client(), alice.token, "alice")
    network = alice.post("/api/v1/networks", json={"name": "n1"})
    mirror = second[0].extensions["ucloud.cache"].mirror(NETWORKS)
    assert mirror.wait_for(int(network.headers["X-Ucloud-Revision"]), 10)
    time.sleep(0.3)
    listed: list[str] = []
    real_list = Store.list
    monkeypatch.setattr(Store, "list", lambda self, family, *a, **k: listed.append(family.prefix)
                        or real_list(self, family, *a, **k))
    for i in range(3):
        wrote = alice.post("/api/v1/vms", json={"name": f"w{i}", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                                "image": "tiny"})
        revision = int(wrote.headers["X-Ucloud-Revision"])
        answer = other.get("/api/v1/networks", headers={"X-Ucloud-Revision": str(revision)})
        assert [n["uuid"] for n in answer.json] == [network.json["uuid"]]
        assert int(answer.headers["X-Ucloud-Revision"]) >= revision
    assert NETWORKS.prefix not in listed


def test_get_one_answers_a_vm_as_its_list_shows_it_with_its_events(alice: As) -> None:
    """GET one joins the JSON the cache made of the VM (none for one with NICs) and its events."""
    network = alice.post("/api/v1/networks", json={"name": "n1"}).json["uuid"]
    plain, wired = alice.create_vm("plain"), alice.create_vm("wired", networks=[network])
    assert alice.post(f"/api/v1/vms/{plain['uuid']}/shutdown").status_code in (202, 409)
    listed = {vm["uuid"]: vm for vm in alice.get("/api/v1/vms").json}
    for vm in (plain, wired):
        one = alice.get(f"/api/v1/vms/{vm['uuid']}")
        assert one.status_code == 200 and one.headers["ETag"] and one.mimetype == "application/json"
        shown = dict(one.json)
        events = shown.pop("events")
        assert shown == listed[vm["uuid"]]
        assert events == alice.get(f"/api/v1/vms/{vm['uuid']}/events").json[-len(events):] and events
    assert listed[wired["uuid"]]["networks"][0]["ipv6"]


@pytest.mark.parametrize("quiet", [True, False])
def test_a_revision_from_the_future_costs_etcd_no_look_at_the_family(
        alice: As, store: Store, monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    """No write has a revision etcd has not reached, and any caller may send one on every request:
    asking etcd whether the family changed (which reads every key of it) was made for each."""
    import ucloud_api.cache as cache_module

    monkeypatch.setattr(cache_module, "QUIET_S", 0.0 if quiet else 3600.0)
    created = alice.post("/api/v1/networks", json={"name": "n1"})
    assert alice.get("/api/v1/networks", headers={"X-Ucloud-Revision": created.headers["X-Ucloud-Revision"]}).json
    asked: list[str] = []
    for method in ("list", "unchanged"):
        real = getattr(Store, method)
        monkeypatch.setattr(Store, method, lambda self, family, *a, _real=real, _method=method, **k:
                            asked.append(f"{_method} {family.prefix}") or _real(self, family, *a, **k))
    future = {"X-Ucloud-Revision": str(store.revision() + 1000)}
    for _ in range(3):
        answer = alice.get("/api/v1/networks", headers=future)
        assert answer.status_code == 200 and [n["name"] for n in answer.json] == ["n1"]
    assert asked == []


def test_a_user_never_sees_anothers_objects(alice: As, bob: As, admin: As, store: Store) -> None:
    for i in range(3):
        alice.create_vm(f"a{i}")
        alice.post("/api/v1/networks", json={"name": f"a{i}"})
    bob.create_vm("b")
    for path in ("/api/v1/vms", "/api/v1/networks"):
        everything = [o for page in pages(bob, path, 1) for o in page]
        assert {o["owner"] for o in everything} <= {"bob"}
        assert len([o for page in pages(admin, path, 2, seen(store)) for o in page]) > len(everything)
    # A continue token names a key, not a permission: one made of alice's first VM pages bob's own.
    first = alice.get("/api/v1/vms?limit=1")
    assert all(vm["owner"] == "bob" for vm in bob.get(
        f"/api/v1/vms?limit=10&continue={first.headers['X-Ucloud-Continue']}").json)
    assert bob.get("/api/v1/vms?owner=alice").status_code == 403


@pytest.mark.etcd_only("cuts the TCP connection")
def test_the_cache_relists_after_a_compaction_and_answers_the_final_state(
        etcd_server: EtcdServer, settings: Settings, store: Store, alice: As) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd_server.client_port)
    behind = settings.model_copy(update={"etcd_endpoints": [type(settings.etcd_endpoints[0]).parse(proxy.endpoint)]})
    for app, _ in other_app(behind):
        cache: ReadCache = app.extensions["ucloud.cache"]
        other = As(app.test_client(), alice.token, "alice")
        keep, change, drop = (alice.create_vm(name)["uuid"] for name in ("keep", "change", "drop"))
        assert cache.vms.wait_for(store.revision(), 10)
        proxy.cut()
        store.update(VMS, change, lambda vm: vm.evolve(restarts=7))
        store.delete(VMS, drop)
        new = store.create(VMS, (made := a_vm("alice", "new")).uuid, made).name
        store.client.compact(store.revision())
        proxy.restore()
        assert cache.vms.wait_for(store.revision(), 20)
        assert cache.vms.relists >= 1
        listed = {vm["uuid"]: vm for vm in other.get("/api/v1/vms").json}
        assert sorted(listed) == sorted([keep, change, new]) and listed[change]["restarts"] == 7
    proxy.cut()


def test_a_token_revoked_through_one_instance_is_refused_by_another(
        alice: As, second: tuple[Flask, Store]) -> None:
    made = alice.post("/api/v1/tokens", json={"name": "laptop"}).json
    elsewhere = As(second[0].test_client(), made["token"], "alice")
    assert elsewhere.get("/api/v1/vms").status_code == 200
    revoked = alice.delete(f"/api/v1/tokens/{made['id']}")
    assert revoked.status_code == 204
    revision = int(revoked.headers["X-Ucloud-Revision"])
    # Sent back, the revision makes any instance refuse it at once...
    refused = elsewhere.get("/api/v1/vms", headers={"X-Ucloud-Revision": str(revision)})
    assert refused.status_code == 401
    # ...and without it, as soon as that instance's watch has delivered the revocation (no 5 s cache).
    cache: ReadCache = second[0].extensions["ucloud.cache"]
    assert cache.tokens.wait_for(revision, 10)
    assert elsewhere.get("/api/v1/vms").status_code == 401


def test_a_token_revoked_after_its_check_was_kept_is_refused_for_the_revocations_revision(
        alice: As, second: tuple[Flask, Store]) -> None:
    """What a worker keeps of a token read for a revision never answers a client that sends a newer
    one: revoked through one instance, the token is refused by the other at once for the revision of
    the revocation, though its check at an earlier revision was kept there."""
    made = alice.post("/api/v1/tokens", json={"name": "laptop"}).json
    elsewhere = As(second[0].test_client(), made["token"], "alice")
    wrote = alice.post("/api/v1/networks", json={"name": "n"})  # a revision the token mirror never reaches
    before = {"X-Ucloud-Revision": wrote.headers["X-Ucloud-Revision"]}
    assert elsewhere.get("/api/v1/vms", headers=before).status_code == 200  # read from etcd, kept
    revoked = alice.delete(f"/api/v1/tokens/{made['id']}")
    after = {"X-Ucloud-Revision": revoked.headers["X-Ucloud-Revision"]}
    assert elsewhere.get("/api/v1/vms", headers=after).status_code == 401


def test_token_checks_do_not_read_etcd(alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    cache: ReadCache = app.extensions["ucloud.cache"]
    now = store.revision()
    assert cache.tokens.wait_for(now, 10) and cache.users.wait_for(now, 10)  # alice's token and user
    reads = []
    real_get = Store.get
    monkeypatch.setattr(Store, "get", lambda self, family, name: reads.append(family.prefix) or real_get(self, family, name))
    for _ in range(20):
        assert alice.get("/api/v1/vms").status_code == 200
    assert reads == []


def test_concurrent_pages_are_consistent(admin: As, store: Store) -> None:
    """A page is read under the mirror's lock: while VMs change, each page is of one revision."""
    for i in range(30):
        vm = a_vm("alice", f"c{i}")
        store.create(VMS, vm.uuid, vm)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            vm = a_vm("bob", "x")
            store.create(VMS, vm.uuid, vm)
            store.delete(VMS, vm.uuid)

    loaded = seen(store)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20):
            response = admin.get("/api/v1/vms?limit=500", headers=loaded)
            names = [vm["name"] for vm in response.json]
            assert sum(1 for n in names if n.startswith("c")) == 30 and names.count("x") <= 1
    finally:
        stop.set()
        thread.join()


def test_a_page_asked_again_at_the_same_revision_is_answered_as_kept_and_a_change_makes_it_anew(
        alice: As, app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from ucloud_common.store.mirror import Table

    alice.create_vm("k1")
    cache: ReadCache = app.extensions["ucloud.cache"]
    assert cache.vms.wait_for(store.revision(), 10)
    paged: list[int] = []
    real_page = Table.page
    monkeypatch.setattr(Table, "page", lambda self, *a, **k: paged.append(1) or real_page(self, *a, **k))
    first, again = alice.get("/api/v1/vms?limit=1"), alice.get("/api/v1/vms?limit=1")
    assert first.data == again.data and len(paged) == 1
    assert first.headers["X-Ucloud-Revision"] == again.headers["X-Ucloud-Revision"]
    assert "X-Ucloud-Continue" not in again.headers
    alice.create_vm("k2")
    changed = alice.get("/api/v1/vms?limit=1")
    assert len(paged) == 2 and "X-Ucloud-Continue" in changed.headers  # a second VM follows now
    assert {vm["name"] for vm in alice.get("/api/v1/vms").json} == {"k1", "k2"}


def test_kept_pages_stay_within_their_budget() -> None:
    from ucloud_api.cache import Pages

    pages = Pages(400)
    for n in range(10):
        pages.put(("p", n), (b"x" * 90, ""))
    assert pages.get(("p", 0)) is None and pages.get(("p", 9)) == (b"x" * 90, "")
    assert sum(pages.get(("p", n)) is not None for n in range(10)) == 4
    pages.put(("big",), (b"x" * 101, ""))  # more than a quarter of the budget: never kept
    assert pages.get(("big",)) is None
