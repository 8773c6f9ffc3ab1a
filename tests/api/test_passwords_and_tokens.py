"""Passwords (set by an admin or the user), logging in with one (throttled per user and per address,
counted in etcd), and users' own API tokens, on the real app and a real etcd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import As, seen
from ucloud_api import throttle
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_api.errors import APIError
from ucloud_api.idempotency import REPLIES
from ucloud_common import clock
from ucloud_common.config import Settings
from ucloud_common.store import Store
from ucloud_common.user import PASSWORDS, TOKENS, Role

PASSWORD = "correct horse battery"


def log_in(client: FlaskClient, name: str, password: str, address: str = "192.0.2.1") -> object:
    return client.post("/api/v1/login", json={"name": name, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def test_admin_sets_a_password_at_creation_and_it_logs_in(admin: As, client: FlaskClient, store: Store) -> None:
    response = admin.post("/api/v1/users", json={"name": "carol", "password": PASSWORD})
    assert response.status_code == 201, response.json
    assert "password" not in response.json and "argon2" not in str(response.json)
    assert store.get(PASSWORDS, "carol").value.argon2.startswith("$argon2id$")  # type: ignore[union-attr]
    login = log_in(client, "carol", PASSWORD)
    assert login.status_code == 201, login.json
    assert login.json["name"] == "login" and login.json["expires_at"] and login.headers["Cache-Control"] == "no-store"
    carol = As(client, login.json["token"], "carol")
    assert carol.get("/api/v1/vms").status_code == 200
    assert admin.post("/api/v1/users", json={"name": "dave", "password": "short"}).status_code == 422


def test_a_new_users_token_is_not_kept_for_idempotent_replays(admin: As, store: Store) -> None:
    first = admin.post("/api/v1/users", json={"name": "carol"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    again = admin.post("/api/v1/users", json={"name": "carol"}, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 409 and first.json["token"] not in again.get_data(as_text=True)
    assert store.count(REPLIES, "") == 0


def test_a_wrong_password_an_unknown_user_and_no_password_are_the_same_401(
        alice: As, client: FlaskClient) -> None:
    for name, password in (("alice", "anything at all"), ("nobody", PASSWORD)):
        response = log_in(client, name, password)
        assert response.status_code == 401, response.json
        assert response.json["error"]["message"] == "wrong name or password"
    assert log_in(client, "a/b", PASSWORD).status_code == 422


def test_users_set_their_own_password_not_anothers(alice: As, bob: As, admin: As, client: FlaskClient) -> None:
    assert alice.put("/api/v1/users/alice/password", json={"password": PASSWORD}).status_code == 204
    assert log_in(client, "alice", PASSWORD).status_code == 201
    refused = bob.put("/api/v1/users/alice/password", json={"password": "bob owns alice now"})
    assert refused.status_code == 403, refused.json
    assert log_in(client, "alice", "bob owns alice now").status_code == 401
    # Changing one's own password again needs the current one: a stolen token is not enough.
    wrong = alice.put("/api/v1/users/alice/password", json={"password": "a new password"})
    assert wrong.status_code == 403 and wrong.json["error"]["code"] == "wrong_password"
    assert alice.put("/api/v1/users/alice/password", json={"password": "a new password",
                                                            "current_password": PASSWORD}).status_code == 204
    # An admin resets anyone's without it.
    assert admin.put("/api/v1/users/alice/password", json={"password": "reset by admin"}).status_code == 204
    assert log_in(client, "alice", "reset by admin").status_code == 201
    assert admin.put("/api/v1/users/ghost/password", json={"password": PASSWORD}).status_code == 404


def test_deleting_a_user_deletes_their_password(admin: As, client: FlaskClient, store: Store) -> None:
    assert admin.post("/api/v1/users", json={"name": "erin", "password": PASSWORD}).status_code == 201
    assert admin.delete("/api/v1/users/erin").status_code == 204
    assert store.get(PASSWORDS, "erin") is None
    assert log_in(client, "erin", PASSWORD).status_code == 401


@pytest.fixture
def strict(settings: Settings) -> Iterator[list[FlaskClient]]:
    """Two API processes (two apps, two etcd clients) that allow 3 failures per 60 s window."""
    small = settings.model_copy(update={"login_failures": 3, "login_window": 60})
    stores = [Store(small), Store(small)]
    try:
        yield [create_app(small, s).test_client() for s in stores]
    finally:
        for s in stores:
            s.close()


def test_failed_logins_are_throttled_per_user_across_api_processes(strict: list[FlaskClient],
                                                                     store: Store) -> None:
    create_user(store, "alice", Role.USER, PASSWORD)
    one, two = strict
    # Failures from different addresses through different processes: the user's count is shared.
    for i, client in enumerate((one, two, one)):
        assert log_in(client, "alice", "wrong password", f"192.0.2.{i + 10}").status_code == 401
    throttled = log_in(two, "alice", PASSWORD, "198.51.100.7")
    assert throttled.status_code == 429, throttled.json
    assert 0 < int(throttled.headers["Retry-After"]) <= 60
    assert "this user" in throttled.json["error"]["message"]


def test_failed_logins_are_throttled_per_source_address(strict: list[FlaskClient], store: Store) -> None:
    create_user(store, "alice", Role.USER, PASSWORD)
    one, two = strict
    for i, client in enumerate((one, two, one)):  # one address guessing three users' passwords
        assert log_in(client, f"user{i}", "guess", "2001:db8::66").status_code == 401
    throttled = log_in(two, "alice", PASSWORD, "2001:db8::66")
    assert throttled.status_code == 429 and "your address" in throttled.json["error"]["message"]
    assert log_in(one, "alice", PASSWORD, "2001:db8::67").status_code == 201  # another address: not held


def test_a_correct_password_clears_the_users_count(strict: list[FlaskClient], store: Store) -> None:
    create_user(store, "alice", Role.USER, PASSWORD)
    one, _ = strict
    for i in range(2):
        assert log_in(one, "alice", "wrong", f"192.0.2.{i}").status_code == 401
    assert log_in(one, "alice", PASSWORD, "192.0.2.50").status_code == 201
    for i in range(2):
        assert log_in(one, "alice", "wrong", f"192.0.2.{i + 100}").status_code == 401
    assert log_in(one, "alice", PASSWORD, "192.0.2.51").status_code == 201


def test_users_create_list_and_revoke_their_own_tokens(alice: As, client: FlaskClient, store: Store) -> None:
    created = alice.post("/api/v1/tokens", json={"name": "laptop"})
    assert created.status_code == 201, created.json
    text = created.json["token"]
    laptop = As(client, text, "alice")
    assert laptop.get("/api/v1/vms").status_code == 200
    listed = alice.get("/api/v1/tokens").json
    assert {t["name"] for t in listed} == {"initial", "laptop"}
    assert all("token" not in t and "sha256" not in t and "salt" not in t for t in listed)
    assert text not in str(store.get(TOKENS, created.json["id"]))  # only its hash is kept
    assert laptop.delete(f"/api/v1/tokens/{created.json['id']}").status_code == 204
    assert laptop.get("/api/v1/vms").status_code == 401  # revoked: stops working at once
    assert alice.get("/api/v1/vms").status_code == 200


def test_a_user_cannot_see_or_revoke_anothers_token(alice: As, bob: As, admin: As) -> None:
    mine = alice.post("/api/v1/tokens", json={"name": "ci"}).json
    assert bob.delete(f"/api/v1/tokens/{mine['id']}").status_code == 404
    assert bob.get("/api/v1/tokens?user=alice").status_code == 403
    assert alice.get("/api/v1/vms", headers={"Authorization": f"Bearer {mine['token']}"}).status_code == 200
    assert "ci" in {t["name"] for t in admin.get("/api/v1/tokens?user=alice").json}
    assert admin.delete(f"/api/v1/tokens/{mine['id']}").status_code == 204


def test_an_expired_token_stops_working(alice: As, client: FlaskClient, store: Store) -> None:
    created = alice.post("/api/v1/tokens", json={"name": "short", "expires_in": 60}).json
    short = As(client, created["token"], "alice")
    assert short.get("/api/v1/vms").status_code == 200
    # An hour later, as far as the record says (the lease would also remove it, a second after).
    store.update(TOKENS, created["id"], lambda t: t.evolve(expires_at=t.created_at.replace(year=2000)))
    response = short.get("/api/v1/vms", headers=seen(store))
    assert response.status_code == 401 and "expired" in response.json["error"]["message"]
    assert alice.post("/api/v1/tokens", json={"name": "x", "expires_in": 5}).status_code == 422


def test_tokens_per_user_are_limited(settings: Settings, store: Store) -> None:
    small = Store(settings.model_copy(update={"max_tokens_per_user": 2}))
    try:
        client = create_app(small.settings, small).test_client()
        alice = As(client, create_user(store, "alice", Role.USER)[1], "alice")
        assert alice.post("/api/v1/tokens", json={"name": "a"}).status_code == 201
        refused = alice.post("/api/v1/tokens", json={"name": "b"})
        assert refused.status_code == 409 and refused.json["error"]["code"] == "limit_reached"
    finally:
        small.close()


def test_wrong_current_passwords_count_as_failed_logins(strict: list[FlaskClient], store: Store) -> None:
    one, _ = strict
    alice = As(one, create_user(store, "alice", Role.USER, PASSWORD)[1], "alice")
    for _ in range(3):  # a stolen token guessing the current password
        assert alice.put("/api/v1/users/alice/password", json={"password": "taken over",
                                                                "current_password": "guess"}).status_code == 403
    held = alice.put("/api/v1/users/alice/password", json={"password": "taken over", "current_password": PASSWORD})
    assert held.status_code == 429 and "Retry-After" in held.headers
    assert log_in(one, "alice", PASSWORD).status_code == 429


def test_a_count_starts_again_when_its_window_is_over(settings: Settings) -> None:
    small = Store(settings.model_copy(update={"login_failures": 2, "login_window": 60}))
    keys = throttle.subjects("alice", "fe80::1%eth0")
    assert keys[1] == "address:fe80::1-eth0"
    try:
        with clock.simulated(clock.SimClock()) as sim:
            throttle.count_failure(small, keys)
            throttle.count_failure(small, keys)
            with pytest.raises(APIError) as refused:
                throttle.check_not_shut_out(small, keys)
            assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "60"}
            sim.advance(61)  # (the real lease is still there: etcd's time did not move)
            throttle.check_not_shut_out(small, keys)
            throttle.count_failure(small, keys)
            assert small.get(throttle.FAILURES, keys[0]).value.count == 1  # type: ignore[union-attr]
    finally:
        small.close()
