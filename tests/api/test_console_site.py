"""The console site's server side on the real app and a real etcd: sessions (cookie, CSRF, logout),
the list of one's own VMs, tickets for the buttons. A real browser drives it in
tests/e2e/test_console_site.py."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import As, set_status
from ucloud_api.app import create_app
from ucloud_api.site import session
from ucloud_common.console import PROXIES, ConsoleProxy
from ucloud_common.event import Kind, object_events, ref
from ucloud_common.states import Status
from ucloud_common.config import Settings
from ucloud_common.store import Store
from ucloud_common.user import TOKENS

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.usefixtures("console_assets")


def nonce_of(client: FlaskClient) -> str:
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def sign_in(client: FlaskClient, name: str, password: str = PASSWORD, address: str = "192.0.2.7") -> object:
    return client.post("/console/login", data={"name": name, "password": password, "nonce": nonce_of(client)},
                       environ_base={"REMOTE_ADDR": address})


def csrf(client: FlaskClient) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/console/").text)
    assert found
    return found.group(1)


def test_a_user_signs_in_sees_only_their_vms_and_signs_out(alice: As, bob: As, store: Store) -> None:
    for user in (alice, bob):
        assert user.put(f"/api/v1/users/{user.name}/password", json={"password": PASSWORD}).status_code == 204
    alice.create_vm("alices-vm")
    bob.create_vm("bobs-vm")
    browser = alice.client

    assert browser.get("/console/").headers["Location"] == "/console/login"  # not signed in
    signed = sign_in(browser, "alice")
    assert signed.status_code == 303 and signed.headers["Location"] == "/console/"  # type: ignore[attr-defined]
    cookie = browser.get_cookie("ucloud_console", path="/console/")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict" and cookie.expires is None
    # The session is a login token of alice's, named so that she can see and revoke it.
    assert [t.value.name for t in store.list(TOKENS, where={"user": "alice"}).items.values()].count("console") == 1

    page = browser.get("/console/")
    assert page.status_code == 200 and "alices-vm" in page.text and "bobs-vm" not in page.text
    assert page.headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in page.headers[
        "Content-Security-Policy"]
    assert browser.get("/console/login").headers["Location"] == "/console/"  # already signed in

    # Logging out is a POST with the page's CSRF token: without it, the session stays.
    assert browser.post("/console/logout", data={}).status_code == 403
    assert browser.get("/console/").status_code == 200
    out = browser.post("/console/logout", data={"csrf": csrf(browser)})
    assert out.status_code == 303 and out.headers["Location"] == "/console/login"
    assert browser.get_cookie("ucloud_console", path="/console/") is None
    assert "console" not in [t.value.name for t in store.list(TOKENS, where={"user": "alice"}).items.values()]
    browser.set_cookie("ucloud_console", cookie.value, path="/console/")  # a copy of the old cookie
    assert browser.get("/console/").headers["Location"] == "/console/login"  # revoked: it opens nothing


def test_a_wrong_password_is_refused_then_throttled_and_a_forged_login_form_is_refused(
        alice: As, client: FlaskClient, store: Store) -> None:
    assert alice.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204
    refused = sign_in(client, "alice", "not her password")
    assert refused.status_code == 401 and "wrong name or password" in refused.text  # type: ignore[attr-defined]
    for _ in range(store.settings.login_failures):
        last = sign_in(client, "alice", "not her password")
    assert last.status_code == 429 and "too many wrong passwords" in last.text  # type: ignore[attr-defined]
    assert int(last.headers["Retry-After"]) > 0  # type: ignore[attr-defined]
    assert sign_in(client, "alice", PASSWORD).status_code == 429  # shut out, the right password too

    # A login posted from elsewhere carries no nonce of this browser's: refused, nothing counted.
    forged = client.post("/console/login", data={"name": "alice", "password": PASSWORD, "nonce": "x"})
    assert forged.status_code == 400 and "cookies are needed" in forged.text
    # ... and one a page of another site made the browser send, nonce or not (a sibling subdomain
    # can plant the nonce cookie; it cannot make the browser say the request is same-origin).
    nonce = nonce_of(client)
    planted = client.post("/console/login", data={"name": "bob", "password": PASSWORD, "nonce": nonce},
                          headers={"Sec-Fetch-Site": "same-site"})
    assert planted.status_code == 403 and "another site" in planted.text


def test_names_and_passwords_that_are_no_login_are_refused_as_wrong_not_500(client: FlaskClient) -> None:
    for name, password in (("al ice", PASSWORD), ("a/b", PASSWORD), ("é", PASSWORD), ("a\x00", PASSWORD),
                           ("x" * 5000, PASSWORD), ("alice", "p" * 400_000), ("", PASSWORD), ("alice", "")):
        refused = sign_in(client, name, password, address=f"198.51.100.{len(name) % 250}")
        assert refused.status_code in (401, 413), (name[:20], refused.status_code)  # type: ignore[attr-defined]


def test_logging_in_again_and_again_never_locks_a_user_out(alice: As, store: Store) -> None:
    """Each login is a session token; the browser's previous one is revoked, and at the token limit
    the oldest session makes room (never another kind of token)."""
    assert alice.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204
    assert sign_in(alice.client, "alice").status_code == 303  # type: ignore[attr-defined]
    for _ in range(2):  # in the same browser (a second tab's login form): one session at a time
        alice.client.set_cookie(session.LOGIN_COOKIE, "a-tabs-nonce", path="/console/")
        again = alice.client.post("/console/login", data={"name": "alice", "password": PASSWORD,
                                                          "nonce": "a-tabs-nonce"})
        assert again.status_code == 303
    names = [t.value.name for t in store.list(TOKENS, where={"user": "alice"}).items.values()]
    assert names.count("console") == 1
    limit = store.settings.max_tokens_per_user
    for _ in range(limit + 2):  # in a new browser each time (no logout)
        alice.client.delete_cookie("ucloud_console", path="/console/")
        assert sign_in(alice.client, "alice").status_code == 303  # type: ignore[attr-defined]
    names = [t.value.name for t in store.list(TOKENS, where={"user": "alice"}).items.values()]
    assert len(names) == limit and names.count("initial") == 1  # her API token stays
    assert alice.get("/api/v1/vms").status_code == 200


def test_the_buttons_tickets_are_the_sessions_users_with_the_apis_errors(alice: As, bob: As, store: Store,
                                                                        settings: Settings) -> None:
    for user in (alice, bob):
        assert user.put(f"/api/v1/users/{user.name}/password", json={"password": PASSWORD}).status_code == 204
    vm = alice.create_vm()
    bobs = bob.create_vm()
    browser = alice.client
    sign_in(browser, "alice")
    token = csrf(browser)
    path = f"/console/vms/{vm['uuid']}/console"

    stopped = browser.post(path, json={"type": "serial"}, headers={session.CSRF_HEADER: token})
    assert stopped.status_code == 409 and stopped.json["error"]["message"] == "the VM is REQUESTED_NEW: start it first"
    set_status(store, vm["uuid"], Status.RUNNING)
    store.create(PROXIES, "h1", ConsoleProxy(url="ws://192.0.2.1:6080"))
    assert browser.post(path, json={"type": "serial"}).status_code == 403  # no CSRF token: another site's page
    assert browser.post(path, json={"type": "serial"}, headers={session.CSRF_HEADER: token,
                                                                "Sec-Fetch-Site": "cross-site"}).status_code == 403
    given = browser.post(path, json={"type": "serial"}, headers={session.CSRF_HEADER: token})
    assert given.status_code == 201, given.json
    url = f"ws://192.0.2.1:6080/serial?ticket={given.json['ticket']}"
    assert given.json["url"] == url and given.json["page"] == f"http://localhost/console/serial#{url}"
    # Behind a reverse proxy, the page is linked from the URL users reach the API at, whatever Host says.
    public = Store(settings.model_copy(update={"public_url": "https://cloud.example"}))
    try:
        behind = As(create_app(public.settings, public).test_client(), alice.token, "alice").post(
            f"/api/v1/vms/{vm['uuid']}/console", json={"type": "vnc"}, headers={"Host": "10.0.0.1:8080"})
    finally:
        public.close()
    assert behind.json["page"].startswith("https://cloud.example/console/vnc#ws://192.0.2.1:6080/vnc?ticket=")
    set_status(store, bobs["uuid"], Status.RUNNING)
    assert browser.post(f"/console/vms/{bobs['uuid']}/console", json={"type": "vnc"},
                        headers={session.CSRF_HEADER: token}).status_code == 404  # bob's: as if absent

    browser.delete_cookie("ucloud_console", path="/console/")
    ended = browser.post(path, json={"type": "serial"}, headers={session.CSRF_HEADER: token})
    assert ended.status_code == 401 and "log in again" in ended.json["error"]["message"]


def test_the_viewer_pages_and_the_browser_parts_are_served(client: FlaskClient, store: Store) -> None:
    store.create(PROXIES, "h1", ConsoleProxy(url="ws://192.0.2.1:6080"))
    store.create(PROXIES, "h2", ConsoleProxy(url="wss://[2001:db8::2]:6080"))
    for kind in ("vnc", "serial"):
        page = client.get(f"/console/{kind}")
        assert page.status_code == 200 and f"{kind}.js" in page.text
        # The only websockets the page opens: the registered proxies'.
        assert 'name="console-proxies" content="ws://192.0.2.1:6080 wss://[2001:db8::2]:6080"' in page.text
    module = client.get("/console/vendor/xterm/lib/xterm.mjs")
    assert module.status_code == 200 and module.mimetype == "text/javascript"
    assert client.get("/console/vendor/novnc/core/rfb.js").mimetype == "text/javascript"
    assert client.get("/console/vendor/../../auth.py").status_code == 404
    assert client.get("/console/rdp").status_code == 404


def test_signing_out_and_a_session_evicted_are_told_in_the_users_log(alice: As, client: FlaskClient,
                                                                     store: Store, settings: Settings) -> None:
    # Every accepted write tells its object's log: a revoked session token is a revoked token,
    # whether the API's DELETE, signing out or a login making room did it.
    assert alice.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204

    def sessions() -> list[str]:
        return [t.name for t in store.list(TOKENS, where={"user": "alice"}).items.values() if t.value.name == "console"]

    sign_in(client, "alice")
    first = sessions()
    assert client.post("/console/logout", data={"csrf": csrf(client)}).status_code == 303
    assert sessions() == []
    full = Store(settings.model_copy(update={"max_tokens_per_user": 2}))
    app = create_app(full.settings, full)
    try:
        browser = app.test_client()
        sign_in(browser, "alice")  # alice's first token and this session: at the limit
        second = sessions()
        sign_in(app.test_client(), "alice")  # another browser: the oldest session makes room
        assert len(sessions()) == 1 and sessions() != second
    finally:
        app.extensions["ucloud.cache"].stop()
        full.close()
    revoked = [e.message for e in object_events(store, ref(Kind.USER, "alice")) if e.message.startswith("revoke")]
    assert revoked == [f"revoke token {first[0]} (console)", f"revoke token {second[0]} (console) to make room"]
