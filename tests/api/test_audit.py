"""The audit trail: every accepted write tells its object's event log who asked what, with the request
id; the id is taken (if sane) or made and answered; events outlive their object for the retention."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import As, set_status
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings
from ucloud_common.event import Event, Kind, forget_old_events, new_event, object_events, ref
from ucloud_common.host import HOSTS, Host
from ucloud_common.logs import JSONFormatter, acting_for
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_common.vm import VMS

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


def told(store: Store, kind: Kind, name: str) -> list[tuple[str, str, str]]:
    """(user, request id, message) of the API's events of the object."""
    return [(e.user, e.request_id, e.message) for e in object_events(store, ref(kind, name)) if e.source == "api"]


def asked(who: As, method: str, path: str, request_id: str, **kw: Any) -> Any:
    response = getattr(who, method)(path, headers={"X-Request-Id": request_id}, **kw)
    assert 200 <= response.status_code < 300, response.json
    assert response.headers["X-Request-Id"] == request_id
    return response


def test_every_kind_of_write_tells_who_asked_with_the_request_id(admin: As, alice: As, store: Store) -> None:
    vm = asked(alice, "post", "/api/v1/vms", "r-create-vm",
               json={"name": "web1", "specs": {"cpu": 1, "ram": 1, "ssd": 10}, "image": "tiny"}).json["uuid"]
    set_status(store, vm, Status.RUNNING)
    asked(alice, "post", f"/api/v1/vms/{vm}/shutdown", "r-stop")
    network = asked(alice, "post", "/api/v1/networks", "r-net", json={"name": "n1"}).json["uuid"]
    asked(alice, "post", f"/api/v1/networks/{network}/attach", "r-attach", json={"vm": vm})
    asked(alice, "post", "/api/v1/ssh-keys", "r-key", json={"name": "laptop", "key": ED25519})
    asked(alice, "delete", "/api/v1/ssh-keys/laptop", "r-unkey")
    token = asked(alice, "post", "/api/v1/tokens", "r-token", json={"name": "ci"}).json["id"]
    asked(alice, "delete", f"/api/v1/tokens/{token}", "r-revoke")
    asked(admin, "post", "/api/v1/users", "r-user", json={"name": "carol", "password": "a long password"})
    asked(admin, "put", "/api/v1/users/carol/password", "r-password", json={"password": "another long one"})
    asked(admin, "delete", "/api/v1/users/carol", "r-unuser")
    store.create(HOSTS, "h9", Host(name="h9", capacity=Specs(cpu=4, ram=8, ssd=100)))
    asked(admin, "post", "/api/v1/hosts/h9/maintenance", "r-maint", json={"on": True})
    asked(admin, "delete", "/api/v1/hosts/h9", "r-forget")
    asked(alice, "delete", f"/api/v1/vms/{vm}", "r-delete-vm")

    assert told(store, Kind.VM, vm) == [
        ("alice", "r-create-vm", "create VM web1 from image tiny"), ("alice", "r-stop", "shutdown"),
        ("alice", "r-attach", f"attach network {network}"), ("alice", "r-delete-vm", "delete")]
    assert told(store, Kind.NETWORK, network) == [("alice", "r-net", told(store, Kind.NETWORK, network)[0][2]),
                                                  ("alice", "r-attach", f"attach VM {vm}")]
    assert [m[1] for m in told(store, Kind.USER, "alice")] == ["r-key", "r-unkey", "r-token", "r-revoke"]
    assert told(store, Kind.USER, "carol") == [
        ("admin", "r-user", "create user carol (user)"), ("admin", "r-password", "set the password"),
        ("admin", "r-unuser", "delete user carol")]
    assert told(store, Kind.HOST, "h9") == [("admin", "r-maint", "maintenance on"), ("admin", "r-forget", "forget the host")]
    # The VM carries the last request's id, for the scheduler and the agent to log.
    assert store.get(VMS, vm).value.request_id == "r-delete-vm"  # type: ignore[union-attr]


def test_images_and_logins_are_told_too(admin: As, alice: As, client: FlaskClient, store: Store) -> None:
    from ucloud_common.file import FILES, File

    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="a.qcow2", size=1, sha512="0" * 128,
                                   mtime=datetime.now(UTC)))
    image = asked(alice, "post", "/api/v1/images", "r-image", json={"name": "i1", "file": "f1", "store": "local"}).json["uuid"]
    asked(alice, "delete", f"/api/v1/images/{image}", "r-unimage")
    assert [(u, r) for u, r, _ in told(store, Kind.IMAGE, image)] == [("alice", "r-image"), ("alice", "r-unimage")]
    admin.put("/api/v1/users/alice/password", json={"password": "a long password"})
    login = client.post("/api/v1/login", json={"name": "alice", "password": "a long password"},
                        headers={"X-Request-Id": "r-login"})
    assert login.status_code == 201
    assert ("alice", "r-login") in [(u, r) for u, r, _ in told(store, Kind.USER, "alice")]


@pytest.mark.parametrize("hostile", ["", "a" * 129, "bad id", "x\r\nSet-Cookie: a=b", "-starts-with-dash",
                                     "naïve", "../../etc"])
def test_a_hostile_request_id_is_replaced(alice: As, hostile: str) -> None:
    try:
        response = alice.get("/api/v1/vms", headers={"X-Request-Id": hostile})
    except ValueError:  # a header the client itself refuses to send (a newline) cannot reach the API
        return
    assert response.status_code == 200
    made = response.headers["X-Request-Id"]
    assert made != hostile and len(made) == 32 and made.isalnum()


def test_the_request_id_is_made_and_answered_also_on_errors(client: FlaskClient, alice: As,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ucloud_api.access")
    unauthenticated = client.get("/api/v1/vms")
    assert unauthenticated.status_code == 401 and len(unauthenticated.headers["X-Request-Id"]) == 32
    missing = alice.get("/api/v1/no-such-thing", headers={"X-Request-Id": "mine-1"})
    assert missing.status_code == 404 and missing.headers["X-Request-Id"] == "mine-1"
    lines = [r.getMessage() for r in caplog.records if r.name == "ucloud_api.access"]
    assert any(line.startswith("user=- GET /api/v1/vms 401 ") for line in lines), lines
    assert any(line.startswith("user=alice GET /api/v1/no-such-thing 404 ") for line in lines), lines


def test_events_outlive_the_vm_for_the_retention_only(settings: Settings, store: Store) -> None:
    short = settings.model_copy(update={"event_retention": 3.0})
    short_store = Store(short)
    try:
        app = create_app(short, short_store)
        _, token = create_user(short_store, "admin", Role.ADMIN)
        admin = As(app.test_client(), token, "admin")
        from ucloud_common.image import IMAGES, Image, ImageStatus
        short_store.create(IMAGES, "tiny", Image(uuid="tiny", owner="admin", name="tiny", store_name="local",
                                                 public=True, status=ImageStatus.CREATED))
        vm = admin.create_vm()["uuid"]
        assert admin.delete(f"/api/v1/vms/{vm}").status_code == 204  # never placed: gone at once
        assert admin.get(f"/api/v1/vms/{vm}").status_code == 404
        kept = admin.get(f"/api/v1/events?object=vm:{vm}").json
        assert [e["message"] for e in kept] == ["create VM web1 from image tiny",
                                                "delete (it was never placed: deleted at once)"]
        deadline = time.monotonic() + 30  # 3 s, plus the bucket, plus etcd's lease check
        while object_events(store, ref(Kind.VM, vm)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert object_events(store, ref(Kind.VM, vm)) == []
    finally:
        short_store.close()


def test_only_an_admin_lists_events(admin: As, alice: As) -> None:
    vm = alice.create_vm()["uuid"]
    refused = alice.get("/api/v1/events")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "forbidden"
    assert alice.get(f"/api/v1/vms/{vm}/events").status_code == 200  # her own VM's, as before
    everything = admin.get("/api/v1/events").json
    assert any(e["object"] == f"vm:{vm}" for e in everything)
    since = everything[-1]["created_at"]
    assert admin.get(f"/api/v1/events?since={since}").json == []
    for bad in ("object=vm", "object=disk:x", "object=vm:a/b", "since=yesterday", "since=2025-01-01T00:00:00",
                "limit=0", "limit=99999999999999999999"):
        answer = admin.get(f"/api/v1/events?{bad}")
        assert answer.status_code == 400 and answer.json["error"]["code"] == "bad_request", bad


def test_all_events_are_read_a_page_at_a_time_and_answered_oldest_first(
        admin: As, alice: As, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /events listed the whole family into one worker (a week of a cluster's events) to answer
    the oldest `limit`: now it reads pages and keeps only those."""
    import ucloud_api.views.events as events_view

    for i in range(7):
        alice.create_vm(f"p{i}")
    everything = admin.get("/api/v1/events?limit=5000").json
    listed: list[str] = []
    real_list = Store.list
    monkeypatch.setattr(Store, "list", lambda self, family, *a, **k: listed.append(family.prefix)
                        or real_list(self, family, *a, **k))
    monkeypatch.setattr(events_view, "_PAGE", 3)
    paged = admin.get("/api/v1/events?limit=5000").json
    assert paged == everything and len(paged) >= 7 and listed == []
    times = [e["created_at"] for e in paged]
    assert times == sorted(times)
    assert admin.get("/api/v1/events?limit=4").json == everything[:4]


def test_paging_events_by_since_loses_none_that_share_a_time(admin: As, store: Store) -> None:
    """Paging on with `since` = the last one's time skipped the others of that microsecond that the
    limit had cut off: a page now ends with every event of its last one's time."""
    at = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    written = [f"step {i}" for i in range(7)]
    for i, message in enumerate(written):  # four of them in the same microsecond
        event = Event(object="host:h1", source="test", message=message,
                      created_at=at if 1 <= i <= 4 else at.replace(microsecond=i if i < 1 else 123456 + i))
        store.transact([replace(new_event(store, ref(Kind.HOST, "h1"), "test", message), record=event)])
    seen: list[str] = []
    since = ""
    for _ in range(10):
        page = admin.get(f"/api/v1/events?object=host:h1&limit=2{since}").json
        if not page:
            break
        seen += [e["message"] for e in page]
        since = "&since=" + page[-1]["created_at"].replace("+", "%2B")
    assert sorted(seen) == written and len(seen) == len(written)


def test_json_log_lines_are_one_object_each_with_the_request_id() -> None:
    formatter = JSONFormatter()
    record = logging.LogRecord("ucloud_api.access", logging.INFO, __file__, 1, "user=%s %s", ("a\nb", "GET"), None)
    record.__dict__.update(user="a\nb", method="GET", path="/x", status=200, duration_ms=1.5)
    with acting_for("r-1"):
        line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "user=a\nb GET" and entry["request_id"] == "r-1" and entry["level"] == "INFO"
    assert (entry["user"], entry["method"], entry["path"], entry["status"], entry["duration_ms"]) == \
        ("a\nb", "GET", "/x", 200, 1.5)
    assert entry["time"].endswith("Z")


def test_an_upgrade_deletes_the_events_of_the_layout_before_the_audit_trail(alice: As, store: Store) -> None:
    vm = alice.create_vm()["uuid"]
    old = f"/v1/event/{vm}:00000001764201600000"  # a VM's event as round 1 wrote it: no object, no lease
    assert store.create_key(old, json.dumps({"vm": vm, "source": "agent h1", "message": "started"}), 0)[0]
    assert forget_old_events(store) == 1
    assert store.read_key(old)[0] is None
    assert [m for _, _, m in told(store, Kind.VM, vm)] == ["create VM web1 from image tiny"]  # today's stay
    assert forget_old_events(store) == 0


@pytest.mark.parametrize("hostile", ["\x85", "\u2028", "\u2029", "\x9b2J", "\u202e"])
def test_a_json_log_line_stays_one_line_of_printable_text(hostile: str) -> None:
    # JSON escapes only the C0 controls: a path holding a C1 control (NEL, CSI), a line or paragraph
    # separator or a bidi override would reach a line splitter or an admin's terminal as it is.
    path = f"/api/v1/{hostile}FORGED"
    record = logging.LogRecord("ucloud_api.access", logging.INFO, __file__, 1, "GET %s", (path,), None)
    record.__dict__.update(path=path)
    line = JSONFormatter().format(record)
    assert line.isprintable() and len(line.splitlines()) == 1, line
    assert json.loads(line)["path"] == path
