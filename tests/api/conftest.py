"""The real app (Flask test client) on a real etcd, with an admin, two users and a usable image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ucloud_api.app import create_app
from ucloud_api.auth import create_user
from ucloud_common.config import Settings
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_common.vm import VMS


@dataclass
class As:
    """A client that sends one user's token with every request."""

    client: FlaskClient
    token: str
    name: str

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.client.put(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def create_vm(self, name: str = "web1", **fields: Any) -> dict[str, Any]:
        body = {"name": name, "specs": {"cpu": 1, "ram": 1, "ssd": 10}, "image": "tiny", **fields}
        response = self.post("/api/v1/vms", json=body)
        assert response.status_code == 201, response.json
        return response.json  # type: ignore[no-any-return]


@pytest.fixture
def app(settings: Settings, store: Store) -> Iterator[Flask]:
    app = create_app(settings, store)
    app.testing = False  # errors go through the app's handlers, as in production
    store.create(IMAGES, "tiny", Image(uuid="tiny", owner="admin", name="tiny", store_name="local",
                                        public=True, status=ImageStatus.CREATED))
    yield app
    app.extensions["ucloud.cache"].stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def admin(client: FlaskClient, store: Store) -> As:
    _, token = create_user(store, "admin", Role.ADMIN)
    return As(client, token, "admin")


@pytest.fixture
def alice(client: FlaskClient, store: Store) -> As:
    _, token = create_user(store, "alice", Role.USER)
    return As(client, token, "alice")


@pytest.fixture
def bob(client: FlaskClient, store: Store) -> As:
    _, token = create_user(store, "bob", Role.USER)
    return As(client, token, "bob")


def seen(store: Store) -> dict[str, str]:
    """Headers that make the API answer at etcd's present revision: what a read after a write of
    another process (the scheduler, an agent: here the test itself) needs to see it at once."""
    return {"X-Ucloud-Revision": str(store.revision())}


def set_status(store: Store, uuid: str, status: Status, hostname: str = "/v1/host/h1") -> None:
    """What the scheduler and the agent would write."""
    store.update(VMS, uuid, lambda vm: vm.evolve(status=status, hostname=hostname))
