"""Tenancy (another user's object is exactly like a missing one) and bad input (always a clear 4xx)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import As, set_status
from ucloud_common.file import FILES, File
from ucloud_common.host import HOSTS, Host
from ucloud_common.specs import Specs, guest_ram_mib
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.vm import VMS

GHOST = "00000000-0000-4000-8000-000000000000"


def same_as_missing(response, missing) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == missing.status_code == 404
    assert response.json["error"]["code"] == missing.json["error"]["code"]
    # The message names what was asked for, and nothing about whether it exists.
    assert response.json["error"]["message"].replace(response.request.path.split("/")[4], "X") == \
        missing.json["error"]["message"].replace(missing.request.path.split("/")[4], "X")


def test_another_users_vm_is_like_a_missing_one(alice: As, bob: As, store: Store) -> None:
    vm = alice.create_vm()["uuid"]
    set_status(store, vm, Status.RUNNING)
    before = store.get(VMS, vm)
    for method, suffix in [("get", ""), ("get", "/events"), ("post", "/suspend"), ("post", "/shutdown"),
                           ("delete", "")]:
        same_as_missing(getattr(bob, method)(f"/api/v1/vms/{vm}{suffix}"),
                        getattr(bob, method)(f"/api/v1/vms/{GHOST}{suffix}"))
    assert bob.get("/api/v1/vms").json == []
    after = store.get(VMS, vm)
    assert before is not None and after is not None and after.mod_revision == before.mod_revision


def test_another_users_network_image_and_files(alice: As, bob: As, store: Store) -> None:
    net = alice.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    vm = alice.create_vm()["uuid"]
    own_net = bob.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    own_vm = bob.create_vm()["uuid"]
    same_as_missing(bob.get(f"/api/v1/networks/{net}"), bob.get(f"/api/v1/networks/{GHOST}"))
    same_as_missing(bob.delete(f"/api/v1/networks/{net}"), bob.delete(f"/api/v1/networks/{GHOST}"))
    assert bob.post(f"/api/v1/networks/{net}/attach", json={"vm": own_vm}).status_code == 404
    assert bob.post(f"/api/v1/networks/{own_net}/attach", json={"vm": vm}).status_code == 404
    assert [n["uuid"] for n in bob.get("/api/v1/networks").json] == [own_net]
    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="a.raw", size=1, sha512="0" * 128,
                                   mtime=datetime.now(UTC)))
    image = alice.post("/api/v1/images", json={"name": "i", "file": "f1", "store": "local"}).json["uuid"]
    same_as_missing(bob.get(f"/api/v1/images/{image}"), bob.get(f"/api/v1/images/{GHOST}"))
    same_as_missing(bob.delete(f"/api/v1/images/{image}"), bob.delete(f"/api/v1/images/{GHOST}"))


def test_admins_see_and_act_on_everything(alice: As, admin: As, store: Store) -> None:
    vm = alice.create_vm()["uuid"]
    set_status(store, vm, Status.RUNNING)
    assert admin.get(f"/api/v1/vms/{vm}").status_code == 200
    assert admin.post(f"/api/v1/vms/{vm}/suspend").status_code == 202


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer ../../etc.passwd"},
                                     {"Authorization": "Bearer abcdef0123456789.wrongsecret"}])
def test_no_valid_token_is_401(client: FlaskClient, headers: dict[str, str], alice: As) -> None:
    response = client.get("/api/v1/vms", headers=headers)
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthenticated"


def test_a_tampered_token_is_401(client: FlaskClient, alice: As) -> None:
    token_id, secret = alice.token.split(".", 1)
    response = client.get("/api/v1/vms", headers={"Authorization": f"Bearer {token_id}.{secret[:-1]}x"})
    assert response.status_code == 401


def good_vm(**changes: object) -> dict[str, object]:
    return {"name": "vm", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny", **changes}


@pytest.mark.parametrize("body, field", [
    (good_vm(name="a/b"), "name"), (good_vm(name=".."), "name"), (good_vm(name="x" * 64), "name"),
    (good_vm(name="tab\there"), "name"), (good_vm(name=""), "name"), (good_vm(name=5), "name"),
    (good_vm(specs={"cpu": 0, "ram": 1, "ssd": 1}), "specs.cpu"),
    (good_vm(specs={"cpu": 1, "ram": -1, "ssd": 1}), "specs.ram"),
    (good_vm(specs={"cpu": 1, "ram": 1, "ssd": 10**12}), "specs.ssd"),
    (good_vm(specs={"cpu": "two", "ram": 1, "ssd": 1}), "specs.cpu"),
    # Each was accepted: strict types, ram in whole MiB from 64 MiB (QEMU got 64 MiB for 1e-300 GiB
    # while the scheduler counted nothing), at least 1 GiB of SSD.
    (good_vm(specs={"cpu": "2", "ram": 1, "ssd": 1}), "specs.cpu"),
    (good_vm(specs={"cpu": True, "ram": 1, "ssd": 1}), "specs.cpu"),
    (good_vm(specs={"cpu": 1.0, "ram": 1, "ssd": 1}), "specs.cpu"),
    (good_vm(specs={"cpu": 1, "ram": 1e-300, "ssd": 1}), "specs.ram"),
    (good_vm(specs={"cpu": 1, "ram": 0.03125, "ssd": 1}), "specs.ram"),
    (good_vm(specs={"cpu": 1, "ram": 0.1, "ssd": 1}), "specs.ram"),
    (good_vm(specs={"cpu": 1, "ram": "1", "ssd": 1}), "specs.ram"),
    (good_vm(specs={"cpu": 1, "ram": 1, "ssd": 0}), "specs.ssd"),
    (good_vm(specs={"cpu": 1, "ram": 1, "ssd": True}), "specs.ssd"),
    (good_vm(specs={"cpu": 1, "ram": 1}), "specs.ssd"),
    (good_vm(specs={"cpu": 1, "ram": 1, "ssd": 1, "gpu": 1}), "specs.gpu"),
    (good_vm(colour="blue"), "colour"), (good_vm(image="nope"), "image"),
    (good_vm(storage="floppy"), "storage"), ({"specs": {"cpu": 1, "ram": 1, "ssd": 1}}, "name"),
])
def test_bad_vm_bodies_name_the_field(alice: As, body: dict[str, object], field: str) -> None:
    response = alice.post("/api/v1/vms", json=body)
    assert response.status_code == 422, response.json
    assert field in [f["field"] for f in response.json["error"]["fields"]]
    assert alice.get("/api/v1/vms").json == []


@pytest.mark.parametrize("data, content_type", [
    (b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"\xff\xfe", "application/json"),
    (b"", "application/json"), (b"null", "application/json"), (b'"text"', "text/plain"),
    # Each was a 500: an integer beyond Python's 4,300 digits, and JSON nested 100,000 deep.
    (b'{"name": "x", "specs": {"cpu": ' + b"9" * 5000 + b"}}", "application/json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    # The last of a duplicate key silently won.
    (b'{"name": "a", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny", "name": "b"}', "application/json"),
    (b'{"name": "a", "specs": {"cpu": 1, "cpu": 64, "ram": 1, "ssd": 1}, "image": "tiny"}', "application/json"),
])
def test_malformed_bodies_are_400(alice: As, data: bytes, content_type: str) -> None:
    response = alice.post("/api/v1/vms", data=data, headers={"Content-Type": content_type})
    assert response.status_code == 400 and response.json["error"]["code"] in ("bad_json", "bad_request")


def test_accepted_ram_is_what_qemu_gets(alice: As) -> None:
    vm = alice.create_vm(specs={"cpu": 1, "ram": 0.0625, "ssd": 1})
    assert vm["specs"]["ram"] * 1024 == guest_ram_mib(vm["specs"]["ram"]) == 64
    assert alice.create_vm("b", specs={"cpu": 2, "ram": 1.5, "ssd": 1})["specs"] == {"cpu": 2, "ram": 1.5, "ssd": 1,
                                                                                   "hdd": 0}


def test_booleans_are_booleans(alice: As, admin: As, store: Store) -> None:
    store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100)))
    for on in (0, 1, "true", None):
        response = admin.post("/api/v1/hosts/h1/maintenance", json={"on": on})
        assert response.status_code == 422 and response.json["error"]["fields"][0]["field"] == "on", on
    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="a.raw", size=1, sha512="0" * 128,
                                   mtime=datetime.now(UTC)))
    response = alice.post("/api/v1/images", json={"name": "i", "file": "f1", "store": "local", "public": 0})
    assert response.status_code == 422 and response.json["error"]["fields"][0]["field"] == "public"


def test_bodies_over_the_limit_are_413_also_when_chunked(alice: As) -> None:
    big = json.dumps(good_vm(pad="x" * (2 * 1024 * 1024))).encode()
    assert alice.post("/api/v1/vms", data=big, headers={"Content-Type": "application/json"}).status_code == 413
    # As gunicorn presents a chunked body: no Content-Length, the stream marked as terminated.
    response = alice.post("/api/v1/vms", input_stream=io.BytesIO(big),
                          environ_overrides={"wsgi.input_terminated": True},
                          headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 413 and response.json["error"]["code"] == "too_large"


def test_unknown_paths_and_methods_are_json(alice: As) -> None:
    missing = alice.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    wrong = alice.put("/api/v1/vms")
    assert wrong.status_code == 405 and "error" in wrong.json


def test_odd_path_parameters_are_404(alice: As) -> None:
    for path in ["/api/v1/vms/..", "/api/v1/vms/%2e%2e", "/api/v1/vms/a%00b", "/api/v1/vms/" + "x" * 300,
                 "/api/v1/networks/%0a", "/api/v1/images/%ff"]:
        response = alice.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json


def test_garbage_in_etcd_is_skipped(alice: As, store: Store) -> None:
    vm = alice.create_vm()["uuid"]
    store.client.put("/v1/vm/garbage", b"{")
    store.client.put(f"/v1/vm/{GHOST}", b'{"owner": "alice"}')
    assert [v["uuid"] for v in alice.get("/api/v1/vms").json] == [vm]
    assert alice.get(f"/api/v1/vms/{GHOST}").status_code == 404


@pytest.mark.parametrize("tag", ['"' + "9" * 5000 + '"', '"\u00b2"', "W/\"12\u0663\""])
def test_an_if_match_that_no_revision_can_be_is_412(alice: As, tag: str) -> None:
    """A tag of 5,000 digits, or with a non-ASCII digit ("²", "٣"), was a 500."""
    vm = alice.create_vm()
    response = alice.post(f"/api/v1/vms/{vm['uuid']}/shutdown", headers={"If-Match": tag})
    assert response.status_code == 412 and response.json["error"]["code"] == "precondition_failed"
