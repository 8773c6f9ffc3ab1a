"""One user's writes past UCLOUD_USER_WRITE_RATE are refused with 429 and Retry-After, before they
change anything; reads, admins and other users go on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.api.conftest import As, set_status
from tests.api.test_console_site import PASSWORD, csrf, sign_in
from ucloud_api.site import session
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings, load_settings
from ucloud_common.console import PROXIES, ConsoleProxy
from ucloud_common.event import Kind, object_events, ref
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_common.vm import VMS


@pytest.fixture
def users(settings: Settings, store: Store) -> Iterator[tuple[As, As, As]]:
    app = create_app(settings.model_copy(update={"user_write_rate": "3/minute"}), store)
    app.testing = False  # errors go through the app's handlers, as in production
    store.create(IMAGES, "tiny", Image(uuid="tiny", owner="admin", name="tiny", store_name="local",
                                        public=True, status=ImageStatus.CREATED))
    made = []
    for name, role in (("admin", Role.ADMIN), ("alice", Role.USER), ("bob", Role.USER)):
        _, token = create_user(store, name, role)
        made.append(As(app.test_client(), token, name))
    yield made[0], made[1], made[2]
    app.extensions["ucloud.cache"].stop()


def test_a_user_past_the_rate_is_refused_and_nothing_is_written(users: tuple[As, As, As], store: Store) -> None:
    admin, alice, bob = users
    for i in range(3):
        alice.create_vm(f"web{i}")
    refused = alice.post("/api/v1/vms", json={"name": "web3", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                              "image": "tiny"})
    assert refused.status_code == 429, refused.json
    assert refused.json["error"]["code"] == "too_many_writes"
    assert "3 per 1 minute" in refused.json["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert sorted(v.value.name for v in store.list(VMS).items.values()) == ["web0", "web1", "web2"]
    assert alice.get("/api/v1/vms").status_code == 200  # reads go on
    # Refused writes use up nothing; other users and admins have their own room, or no limit.
    bob.create_vm("b1")
    for i in range(5):
        assert admin.post("/api/v1/networks", json={"name": f"n{i}"}).status_code == 201


def test_a_rate_that_names_no_limit_is_refused_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "ucloud.conf"
    conf.write_text("UCLOUD_USER_WRITE_RATE=lots\n")
    with pytest.raises(ValidationError, match="lots"):
        load_settings(config_file=conf)
    conf.write_text("UCLOUD_USER_WRITE_RATE=\n")
    assert load_settings(config_file=conf).user_write_rate == ""


def test_the_console_sites_tickets_count_against_the_rate_too(users: tuple[As, As, As], store: Store) -> None:
    # Each ticket is a write with an event kept for the retention: past the rate, a signed-in user
    # clicking (or scripting) the site's console button would fill etcd as the API's route cannot.
    admin, alice, _ = users
    assert admin.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204
    vm = alice.create_vm()["uuid"]
    set_status(store, vm, Status.RUNNING)
    store.create(PROXIES, "h1", ConsoleProxy(url="ws://192.0.2.1:6080"))
    browser = alice.client
    sign_in(browser, "alice")
    token = csrf(browser)
    answers = [browser.post(f"/console/vms/{vm}/console", json={"type": "serial"},
                            headers={session.CSRF_HEADER: token}).status_code for _ in range(3)]
    assert answers == [201, 429, 429]  # the VM, the login, one ticket: 3 per minute
    assert [e.message for e in object_events(store, ref(Kind.VM, vm))].count("open the serial console") == 1


def test_logins_count_against_the_rate_too(users: tuple[As, As, As], store: Store) -> None:
    # A login writes a token and an event kept for the retention, and the console site's evicts the
    # oldest session to make room: without the rate, a user who knows their password could log in
    # without end (each costs only a password hash) and fill etcd with events.
    admin, alice, _ = users
    assert admin.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204
    signed = [sign_in(alice.client.application.test_client(), "alice").status_code for _ in range(4)]  # type: ignore[attr-defined]
    assert signed == [303, 303, 303, 429]
    api = alice.client.post("/api/v1/login", json={"name": "alice", "password": PASSWORD})
    assert api.status_code == 429 and api.json["error"]["code"] == "too_many_writes"
    logins = [e.message for e in object_events(store, ref(Kind.USER, "alice")) if e.message.startswith("create token")]
    assert len(logins) == 3
    assert admin.put("/api/v1/users/admin/password", json={"password": PASSWORD}).status_code == 204
    for _ in range(4):  # an admin is not limited
        assert admin.client.post("/api/v1/login", json={"name": "admin", "password": PASSWORD}).status_code == 201
