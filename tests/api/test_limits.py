"""What one user can store (issue 14, items 1 and 3): counts per user, records of bounded size, and a
write etcd would refuse as too large answered as such (413/409/422 naming the limit), never a 503."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import As
from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings
from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.store import Store, TooLarge
from ucloud_common.user import USERS, Role

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
ETCD_REQUEST_LIMIT = 1_572_864  # etcd's --max-request-bytes default


@pytest.fixture
def limited(settings: Settings, store: Store) -> Iterator[FlaskClient]:
    """The app with small limits: 2 VMs, 2 networks, 2 images, 3 SSH keys per user."""
    small = Store(settings.model_copy(update={"max_vms_per_user": 2, "max_networks_per_user": 2,
                                              "max_images_per_user": 2, "max_ssh_keys_per_user": 3}))
    app = create_app(small.settings, small)
    small.create(IMAGES, "tiny", Image(uuid="tiny", owner="admin", name="tiny", store_name="local", public=True,
                                       status=ImageStatus.CREATED))
    try:
        yield app.test_client()
    finally:
        small.close()


def user(client: FlaskClient, store: Store, name: str) -> As:
    return As(client, create_user(store, name, Role.USER)[1], name)


def refused_at_the_limit(response, setting: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 409, response.json
    assert response.json["error"]["code"] == "limit_reached"
    assert setting in response.json["error"]["message"]


def refused_at_the_quota(response, quota: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 409, response.json
    assert (response.json["error"]["code"], response.json["error"]["quota"], response.json["error"]["limit"]) == (
        "quota_exceeded", quota, 2)


def test_counts_per_user_are_limited_and_one_users_limit_is_not_anothers(limited: FlaskClient,
                                                                         store: Store) -> None:
    alice, bob = user(limited, store, "alice"), user(limited, store, "bob")
    for n in range(2):
        alice.create_vm(f"vm{n}")
        assert alice.post("/api/v1/networks", json={"name": f"n{n}"}).status_code == 201
        store.create(FILES, f"f{n}", File(uuid=f"f{n}", owner="alice", filename=f"{n}.raw", size=1,
                                          sha512="0" * 128, mtime=datetime.now(UTC)))
        assert alice.post("/api/v1/images", json={"name": f"i{n}", "file": f"f{n}", "store": "local"}).status_code == 201
        assert alice.post("/api/v1/ssh-keys", json={"name": f"k{n}", "key": ED25519}).status_code == 201
    assert alice.post("/api/v1/ssh-keys", json={"name": "k2", "key": ED25519}).status_code == 201
    # VMs and images: the settings are the defaults of their quotas (tests/api/test_quotas.py).
    refused_at_the_quota(alice.post("/api/v1/vms", json={"name": "vm2", "specs": {"cpu": 1, "ram": 1, "ssd": 1},
                                                         "image": "tiny"}), "vms")
    refused_at_the_limit(alice.post("/api/v1/networks", json={"name": "n2"}), "UCLOUD_MAX_NETWORKS_PER_USER")
    refused_at_the_quota(alice.post("/api/v1/images", json={"name": "i2", "file": "f0", "store": "local"}), "images")
    refused_at_the_limit(alice.post("/api/v1/ssh-keys", json={"name": "k3", "key": ED25519}),
                         "UCLOUD_MAX_SSH_KEYS_PER_USER")
    assert len(alice.get("/api/v1/vms").json) == 2
    # Another user is not counted with alice.
    bob.create_vm("vm0")
    assert bob.post("/api/v1/networks", json={"name": "n0"}).status_code == 201
    # Deleting one makes room again (a VM not yet placed goes at once).
    first = alice.get("/api/v1/vms").json[0]["uuid"]
    assert alice.delete(f"/api/v1/vms/{first}").status_code == 204
    alice.create_vm("vm2")


def test_a_vm_copies_a_bounded_number_of_bounded_keys(alice: As, store: Store) -> None:
    for n in range(11):
        assert alice.post("/api/v1/ssh-keys", json={"name": f"k{n}", "key": f"{ED25519} {'c' * 3900}"}).status_code == 201
    too_many = alice.post("/api/v1/vms", json={"name": "vm", "specs": {"cpu": 1, "ram": 1, "ssd": 1}, "image": "tiny",
                                               "ssh_keys": [f"k{n}" for n in range(11)]})
    assert too_many.status_code == 422 and too_many.json["error"]["fields"][0]["field"] == "ssh_keys"
    vm = alice.create_vm(ssh_keys=[f"k{n}" for n in range(10)])
    assert len(store.client.get(f"/v1/vm/{vm['uuid']}")[0]) < 48 * 1024


def test_a_user_cannot_grow_their_record_past_what_etcd_takes(alice: As, store: Store) -> None:
    """Keys of 16 KiB were accepted until the 96th pushed the user record past etcd's 1.5 MiB request
    limit, which answered 503 "etcd unreachable". Now every answer is a success or a refusal naming a
    limit, and the record stays far below etcd's."""
    for key in (f"{ED25519} {'c' * 16000}", f"{ED25519} {'c' * 4000}"):
        for n in range(100):
            response = alice.post("/api/v1/ssh-keys", json={"name": f"k{len(key)}-{n}", "key": key})
            assert response.status_code in (201, 409, 422), response.json
            if response.status_code != 201:
                assert "4096" in response.json["error"]["message"] or "UCLOUD_MAX_SSH_KEYS_PER_USER" in \
                    response.json["error"]["message"]
                break
    record, _ = store.client.get("/v1/user/alice")
    assert len(record) < ETCD_REQUEST_LIMIT / 8
    assert len(alice.get("/api/v1/ssh-keys").json) == 32


def test_a_write_etcd_refuses_as_too_large_is_413_naming_the_limit(alice: As, store: Store, mocker) -> None:  # type: ignore[no-untyped-def]
    """No request can make one any more; should one get through, it is the client's 413, not an outage."""
    before = store.get(USERS, "alice")
    mocker.patch.object(Store, "transact", side_effect=TooLarge("etcd refused: request is too large"))
    response = alice.post("/api/v1/ssh-keys", json={"name": "k", "key": ED25519})
    assert response.status_code == 413 and response.json["error"]["code"] == "too_large"
    assert "1.5 MiB" in response.json["error"]["message"]
    mocker.stopall()
    assert store.get(USERS, "alice") == before
