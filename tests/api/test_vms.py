"""VMs through the API: create, read, list, every action × every status, ETag, idempotency."""

from __future__ import annotations

import threading

import pytest

from tests.api.conftest import As, seen, set_status
from ucloud_api.idempotency import REPLIES
from ucloud_common.states import ACTIONS, Action, Requested, Status
from ucloud_common.host import HOSTS, Host, HostStatus
from ucloud_common.leftover import LEFTOVERS, leftover_name
from ucloud_common.quota import usage
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_common.vm import VMS


def test_create_read_list(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    assert vm["owner"] == "alice" and vm["status"] == "REQUESTED_NEW" and vm["requested"] == "RUNNING"
    got = alice.get(f"/api/v1/vms/{vm['uuid']}")
    assert got.status_code == 200 and got.json["name"] == "web1" and [(e["user"], e["message"]) for e in got.json["events"]] == [("alice", "create VM web1 from image tiny")]
    assert got.headers["ETag"].strip('"').isdigit()
    assert [v["uuid"] for v in alice.get("/api/v1/vms").json] == [vm["uuid"]]
    stored = store.get(VMS, vm["uuid"])
    assert stored is not None and f'"{stored.mod_revision}"' == got.headers["ETag"]


def test_names_are_unique_per_owner(alice: As, bob: As) -> None:
    alice.create_vm("web1")
    again = alice.post("/api/v1/vms", json={"name": "web1", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny"})
    assert again.status_code == 409 and "already have a VM named web1" in again.json["error"]["message"]
    bob.create_vm("web1")  # another owner may use the same name


def test_concurrent_creates_of_one_name_make_one_vm(app, alice: As, store: Store) -> None:  # type: ignore[no-untyped-def]
    results: list[int] = []

    def create() -> None:
        client = app.test_client()
        response = client.post("/api/v1/vms", headers={"Authorization": f"Bearer {alice.token}"},
                               json={"name": "race", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny"})
        results.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 7
    assert len([v for v in store.list(VMS).items.values() if v.value.name == "race"]) == 1


@pytest.mark.parametrize("action", [a for a in Action if a not in (Action.DELETE, Action.MIGRATE, Action.RESIZE)])
@pytest.mark.parametrize("status", list(Status))
def test_every_action_in_every_status(alice: As, store: Store, action: Action, status: Status) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], status)
    before = store.get(VMS, vm["uuid"])
    response = alice.post(f"/api/v1/vms/{vm['uuid']}/{action.value}")
    after = store.get(VMS, vm["uuid"])
    assert before is not None and after is not None
    if status in ACTIONS[action].valid_in:
        assert response.status_code == 202, response.json
        assert response.json["requested"] == ACTIONS[action].requested.value
        assert after.value.generation == before.value.generation + 1
        assert response.headers["ETag"] == f'"{after.mod_revision}"'
    else:
        assert response.status_code == 409
        assert response.json["error"]["message"].startswith(f"cannot {action.value}: the VM is {status}")
        assert after.mod_revision == before.mod_revision, "a refused request writes nothing"


def test_the_seeds_case_a_killed_vm_asked_to_suspend(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.KILLED)
    response = alice.post(f"/api/v1/vms/{vm['uuid']}/suspend")
    assert response.status_code == 409
    assert response.json["error"]["message"] == "cannot suspend: the VM is KILLED (suspend is possible when it is RUNNING)"
    stored = store.get(VMS, vm["uuid"])
    assert stored is not None and stored.value.requested is Requested.RUNNING


def test_reboot_sets_the_reboot_generation(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING)
    response = alice.post(f"/api/v1/vms/{vm['uuid']}/reboot")
    assert response.status_code == 202
    assert response.json["reboot_generation"] == response.json["generation"] == 2


@pytest.mark.parametrize("status", list(Status))
def test_delete_in_every_status(alice: As, store: Store, status: Status) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], status, hostname="" if status is Status.REQUESTED_NEW else "/v1/host/h1")
    response = alice.delete(f"/api/v1/vms/{vm['uuid']}")
    if status is Status.REQUESTED_NEW:
        assert response.status_code == 204 and store.get(VMS, vm["uuid"]) is None
        alice.create_vm()  # its name is free again at once
    else:
        assert response.status_code == 202 and response.json["requested"] == "DELETED"
        again = alice.post(f"/api/v1/vms/{vm['uuid']}/start")
        assert again.status_code == 409 and "being deleted" in again.json["error"]["message"]


def test_a_name_is_free_again_once_its_vm_is_gone(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    store.delete(VMS, vm["uuid"])  # what the agent does at the end of a deletion
    alice.create_vm()


def test_migrate_is_for_admins_of_vms_on_shared_storage_one_at_a_time(alice: As, admin: As, store: Store) -> None:
    local = alice.create_vm("local")
    set_status(store, local["uuid"], Status.RUNNING)
    refused = admin.post(f"/api/v1/vms/{local['uuid']}/migrate")
    assert refused.status_code == 409 and "only host h1 reaches" in refused.json["error"]["message"]

    vm = alice.create_vm("shared")
    store.update(VMS, vm["uuid"], lambda v: v.evolve(storage="rbd"))
    set_status(store, vm["uuid"], Status.RUNNING)
    path = f"/api/v1/vms/{vm['uuid']}"
    assert alice.post(f"{path}/migrate").status_code == 403
    assert alice.delete(f"{path}/migration").status_code == 403
    assert admin.delete(f"{path}/migration").status_code == 409  # none to cancel
    unknown = admin.post(f"{path}/migrate", json={"host": "nowhere"})
    assert unknown.status_code == 422
    store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100)))
    assert "already runs on host h1" in admin.post(f"{path}/migrate", json={"host": "h1"}).json["error"]["message"]
    response = admin.post(f"{path}/migrate")
    assert response.status_code == 202 and response.json["migrate_to"] == "*"
    assert response.json["migrate_generation"] == response.json["generation"] > response.json["migrated_generation"]
    again = admin.post(f"{path}/migrate")
    assert again.status_code == 409 and "already under way" in again.json["error"]["message"]
    cancelled = admin.delete(f"{path}/migration")
    assert cancelled.status_code == 202 and cancelled.json["migrate_to"] == ""


def stopped_vm(alice: As, store: Store, **specs: int) -> str:
    vm = alice.create_vm(specs={"cpu": 1, "ram": 1, "ssd": 10, **specs})
    store.update(VMS, vm["uuid"], lambda v: v.evolve(status=Status.STOPPED, requested=Requested.STOPPED,
                                                     hostname="/v1/host/h1"))
    return str(vm["uuid"])


@pytest.mark.parametrize("status", list(Status))
def test_resize_only_a_stopped_vm(alice: As, store: Store, status: Status) -> None:
    uuid = stopped_vm(alice, store)
    set_status(store, uuid, status)
    before = store.get(VMS, uuid)
    response = alice.post(f"/api/v1/vms/{uuid}/resize", json={"cpu": 2})
    after = store.get(VMS, uuid)
    assert before is not None and after is not None
    if status is Status.STOPPED:
        assert response.status_code == 202, response.json
        assert response.json["resize"] == {"cpu": 2, "ram": 1.0, "ssd": 10, "hdd": 0}
        assert response.json["specs"]["cpu"] == 1, "written by the scheduler once it found room"
        assert after.value.requested is Requested.STOPPED and after.value.generation == before.value.generation + 1
    else:
        assert response.status_code == 409
        assert response.json["error"]["message"] == (f"cannot resize: the VM is {status} (resize is possible when "
                                                     "it is STOPPED)")
        assert after.mod_revision == before.mod_revision, "a refused request writes nothing"


def test_resize_grows_disks_only_and_says_what_is_wrong(alice: As, store: Store) -> None:
    uuid = stopped_vm(alice, store, hdd=20)
    path = f"/api/v1/vms/{uuid}/resize"
    for body, field, words in [({"ssd": 5}, "ssd", "disks only grow: the VM has 10 GiB, 5 GiB would cut off"),
                               ({"hdd": 0}, "hdd", "disks only grow: the VM has 20 GiB, 0 GiB"),
                               ({"ram": 0.0001}, "ram", "greater than or equal to 0.0625"),
                               ({"cpu": "2"}, "cpu", "valid integer"),
                               ({"disk": 5}, "disk", "Extra inputs are not permitted"),
                               ({}, "", "name at least one of cpu, ram, ssd, hdd")]:
        response = alice.post(path, json=body)
        assert response.status_code == 422, (body, response.json)
        assert words in str(response.json["error"]), (body, response.json)
        if field:
            assert field in {f["field"] for f in response.json["error"]["fields"]}, response.json
    assert alice.post(path).status_code == 400  # a body is needed
    stored = store.get(VMS, uuid)
    assert stored is not None and stored.value.resize is None and stored.value.specs.ssd == 10
    # Growing both disks and changing cpu and ram at once; the others stay as they are.
    response = alice.post(path, json={"ssd": 15, "hdd": 30, "ram": 0.5})
    assert response.status_code == 202 and response.json["resize"] == {"cpu": 1, "ram": 0.5, "ssd": 15, "hdd": 30}
    assert [e["message"] for e in alice.get(f"/api/v1/vms/{uuid}/events").json][-1] == \
        "resize to 1 CPUs, 0.5 GiB RAM, 15 GiB SSD, 30 GiB HDD"


def test_a_pending_resize_holds_off_a_start_and_another_resize(alice: As, store: Store) -> None:
    uuid = stopped_vm(alice, store)
    assert alice.post(f"/api/v1/vms/{uuid}/resize", json={"cpu": 2}).status_code == 202
    for action, body in (("start", None), ("resize", {"cpu": 3})):
        response = alice.post(f"/api/v1/vms/{uuid}/{action}", json=body)
        assert response.status_code == 409, response.json
        assert f"cannot {action}: a resize of the VM waits for the scheduler" in response.json["error"]["message"]
    # Once the scheduler wrote the specs (what plan._resize does), it starts with them.
    store.update(VMS, uuid, lambda v: v.evolve(specs=v.resize, resize=None))
    assert alice.post(f"/api/v1/vms/{uuid}/start").status_code == 202
    # And a VM asked to start is not resized while it may be starting.
    refused = alice.post(f"/api/v1/vms/{uuid}/resize", json={"cpu": 4})
    assert refused.status_code == 409 and "asked to be RUNNING" in refused.json["error"]["message"]


def test_unknown_action(alice: As) -> None:
    vm = alice.create_vm()
    response = alice.post(f"/api/v1/vms/{vm['uuid']}/explode")
    # The route takes only actions (so that OPTIONS and a 405's Allow are exact for every path).
    assert response.status_code == 404 and "openapi.json" in response.json["error"]["message"]


def test_if_match(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING)
    etag = alice.get(f"/api/v1/vms/{vm['uuid']}").headers["ETag"]
    set_status(store, vm["uuid"], Status.RUNNING, hostname="/v1/host/h2")  # someone else wrote
    stale = alice.post(f"/api/v1/vms/{vm['uuid']}/suspend", headers={"If-Match": etag})
    assert stale.status_code == 412
    stored = store.get(VMS, vm["uuid"])
    assert stored is not None and stored.value.requested is Requested.RUNNING
    fresh = alice.get(f"/api/v1/vms/{vm['uuid']}").headers["ETag"]
    assert alice.post(f"/api/v1/vms/{vm['uuid']}/suspend", headers={"If-Match": fresh}).status_code == 202
    assert alice.post(f"/api/v1/vms/{vm['uuid']}/resume", headers={"If-Match": "garbage"}).status_code == 412


def test_idempotency_key_returns_the_first_result_and_creates_nothing_twice(alice: As, store: Store) -> None:
    body = {"name": "once", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny"}
    first = alice.post("/api/v1/vms", json=body, headers={"Idempotency-Key": "k-1"})
    second = alice.post("/api/v1/vms", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 201
    assert first.json == second.json and second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert len(store.list(VMS).items) == 1
    other = alice.post("/api/v1/vms", json={**body, "name": "other"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json["error"]["code"] == "idempotency_key_reused"


def test_only_accepted_writes_keep_a_reply_and_replies_share_a_lease(alice: As, store: Store) -> None:
    """Every reply was kept a day on a lease of its own, refusals too: 500 requests answered 422 left
    500 keys on 500 leases."""
    bad = {"name": "v", "specs": {"cpu": 0, "ram": 1, "ssd": 1}, "image": "tiny"}
    for n in range(20):
        assert alice.post("/api/v1/vms", json=bad, headers={"Idempotency-Key": f"bad-{n}"}).status_code == 422
    assert store.count(REPLIES, "") == 0
    for n in range(5):
        body = {"name": f"v{n}", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny"}
        assert alice.post("/api/v1/vms", json=body, headers={"Idempotency-Key": f"ok-{n}"}).status_code == 201
    kept = store.list(REPLIES).items
    assert len(kept) == 5
    assert len({store.client.get(REPLIES.key(name))[1].lease_id for name in kept}) == 1


def test_replies_kept_per_user_are_capped(alice: As, bob: As, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "settings", store.settings.model_copy(update={"max_idempotency_keys_per_user": 2}))
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING)
    for key in ("a", "b"):
        assert alice.post(f"/api/v1/vms/{vm['uuid']}/reboot", headers={"Idempotency-Key": key}).status_code == 202
    over = alice.post(f"/api/v1/vms/{vm['uuid']}/reboot", headers={"Idempotency-Key": "c"})
    assert over.status_code == 429 and "UCLOUD_MAX_IDEMPOTENCY_KEYS_PER_USER" in over.json["error"]["message"]
    again = alice.post(f"/api/v1/vms/{vm['uuid']}/reboot", headers={"Idempotency-Key": "a"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert bob.post("/api/v1/networks", json={"name": "n"}, headers={"Idempotency-Key": "a"}).status_code == 201


def test_idempotent_actions(alice: As, store: Store) -> None:
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING)
    first = alice.post(f"/api/v1/vms/{vm['uuid']}/reboot", headers={"Idempotency-Key": "r"})
    second = alice.post(f"/api/v1/vms/{vm['uuid']}/reboot", headers={"Idempotency-Key": "r"})
    assert first.json == second.json
    stored = store.get(VMS, vm["uuid"])
    assert stored is not None and stored.value.generation == 2, "the reboot was requested once"


def test_concurrent_actions_lose_no_update(app, alice: As, store: Store) -> None:  # type: ignore[no-untyped-def]
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING)
    codes: list[int] = []

    def reboot() -> None:
        client = app.test_client()
        for _ in range(5):
            codes.append(client.post(f"/api/v1/vms/{vm['uuid']}/reboot",
                                     headers={"Authorization": f"Bearer {alice.token}"}).status_code)

    threads = [threading.Thread(target=reboot) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * 30
    stored = store.get(VMS, vm["uuid"])
    assert stored is not None and stored.value.generation == 31


def test_admin_lists_all_and_filters(alice: As, bob: As, admin: As, store: Store) -> None:
    a = alice.create_vm("a")
    b = bob.create_vm("b")
    set_status(store, b["uuid"], Status.RUNNING, hostname="/v1/host/h2")
    now = seen(store)  # the scheduler's write (the test's here) is seen once the watch delivers it
    assert {v["uuid"] for v in admin.get("/api/v1/vms", headers=now).json} == {a["uuid"], b["uuid"]}
    assert [v["uuid"] for v in admin.get("/api/v1/vms?owner=alice", headers=now).json] == [a["uuid"]]
    assert [v["uuid"] for v in admin.get("/api/v1/vms?host=h2", headers=now).json] == [b["uuid"]]
    assert [v["uuid"] for v in admin.get("/api/v1/vms?status=RUNNING", headers=now).json] == [b["uuid"]]
    assert alice.get("/api/v1/vms?owner=bob").status_code == 403
    assert alice.get("/api/v1/vms?status=NAPPING").status_code == 400


def test_the_owner_reads_the_event_log_in_order(alice: As, bob: As, store: Store) -> None:
    from ucloud_common.event import Kind, new_event, ref

    vm = alice.create_vm()["uuid"]
    other = alice.create_vm("other")["uuid"]
    for source, message in [("scheduler", "placed on h1"), ("agent h1", "disk created"), ("agent h1", "RUNNING")]:
        store.transact([new_event(store, ref(Kind.VM, vm), source, message)])
    store.transact([new_event(store, ref(Kind.VM, other), "scheduler", "not mine")])
    events = alice.get(f"/api/v1/vms/{vm}/events").json
    assert [e["message"] for e in events] == ["create VM web1 from image tiny", "placed on h1", "disk created", "RUNNING"]
    assert alice.get(f"/api/v1/vms/{vm}").json["events"] == events
    assert bob.get(f"/api/v1/vms/{vm}/events").status_code == 404


def test_the_storage_must_match_the_images_store(alice: As, store: Store) -> None:
    from ucloud_common.image import IMAGES, Image, ImageStatus

    store.create(IMAGES, "in-ceph", Image(uuid="in-ceph", owner="admin", name="in-ceph", store_name="images",
                                          public=True, status=ImageStatus.CREATED))
    body = {"name": "x", "specs": {"cpu": 1, "ram": 1, "ssd": 1}}
    wrong = alice.post("/api/v1/vms", json={**body, "image": "tiny", "storage": "rbd"})
    assert wrong.status_code == 422 and wrong.json["error"]["fields"][0]["field"] == "storage"
    assert alice.post("/api/v1/vms", json={**body, "image": "in-ceph"}).status_code == 422
    assert alice.post("/api/v1/vms", json={**body, "image": "in-ceph", "storage": "rbd"}).status_code == 201


def _on_host(store: Store, vm: dict[str, object], status: HostStatus, **fields: object) -> str:
    """Place `vm` on host h1 (in `status`), KILLED as the scheduler leaves a DOWN host's VMs."""
    if store.get(HOSTS, "h1") is None:
        store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100), status=status))
    uuid = str(vm["uuid"])
    store.update(VMS, uuid, lambda v: v.evolve(status=Status.KILLED, hostname=HOSTS.key("h1"), **fields))
    return uuid


def test_a_vm_whose_disk_is_on_a_down_host_is_deleted_at_once_and_left_to_that_hosts_agent(
        alice: As, admin: As, store: Store) -> None:
    """A host that died for good held its VMs' deletions (202 for ever), their names, addresses and
    their owners' usage, and with them the deletion of their owners and of the host itself."""
    uuid = _on_host(store, alice.create_vm("web1"), HostStatus.DOWN)
    assert alice.delete(f"/api/v1/vms/{uuid}").status_code == 204
    assert store.get(VMS, uuid) is None
    leftover = store.get(LEFTOVERS, leftover_name("h1", uuid))
    assert leftover is not None and leftover.value.vm.uuid == uuid and leftover.value.host == "h1"
    assert usage(store, "alice")[0].vms == 0
    assert alice.post("/api/v1/vms", json={"name": "web1", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                           "image": "tiny"}).status_code == 201  # its name is free
    told = admin.get(f"/api/v1/events?object=vm:{uuid}").json
    assert "its host h1 is down: deleted at once" in told[-1]["message"]
    assert admin.delete("/api/v1/hosts/h1").status_code == 204


def test_a_vm_whose_host_is_up_or_whose_disk_is_shared_waits_for_its_hosts_agent(alice: As, store: Store) -> None:
    up = _on_host(store, alice.create_vm("a"), HostStatus.UP)
    assert alice.delete(f"/api/v1/vms/{up}").status_code == 202
    store.update(HOSTS, "h1", lambda h: h.evolve(status=HostStatus.DOWN))
    shared = _on_host(store, alice.create_vm("b"), HostStatus.DOWN, storage="rbd")
    assert alice.delete(f"/api/v1/vms/{shared}").status_code == 202  # restarted elsewhere once fenced
    assert store.get(VMS, shared) is not None and store.list(LEFTOVERS).items == {}
    assert alice.delete(f"/api/v1/vms/{up}").status_code == 204  # asked before, its host down since
