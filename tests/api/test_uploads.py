"""Uploads through the API (`PUT /api/v1/files/{name}`) into users' folders, on a real etcd; the
streamed cases (chunked, aborted, slower than the read timeout) under the real gunicorn."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest

from tests.api.conftest import As
from tests.api.test_processes import READ_TIMEOUT, UPLOAD_MAX, call, gunicorn  # noqa: F401 (a fixture)
from tests.helpers.processes import wait_until
from ucloud_api.auth import create_user
from ucloud_common.config import Settings
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_filescan.scan import scan

LIMIT = 1024 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"upload_max_size": LIMIT / 2**30})


def folder_of(settings: Settings, user: str) -> Path:
    return settings.upload_dir / user


def nothing_in(folder: Path) -> bool:
    return not folder.exists() or os.listdir(folder) == []


def test_an_upload_is_stored_under_its_name_and_file_scan_registers_it(alice: As, settings: Settings,
                                                                         store: Store) -> None:
    body = os.urandom(300_000)
    response = alice.put("/api/v1/files/disk.qcow2", data=body)
    assert response.status_code == 201, response.json
    assert response.json["filename"] == "disk.qcow2" and response.json["size"] == len(body)
    folder = folder_of(settings, "alice")
    assert os.listdir(folder) == ["disk.qcow2"], "the temporary name is gone"
    assert (folder / "disk.qcow2").read_bytes() == body
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((folder / "disk.qcow2").stat().st_mode) == 0o640
    assert scan(store, settings.upload_dir, settle=0).registered == 1
    assert [f["filename"] for f in alice.get("/api/v1/files").json] == ["disk.qcow2"]


def test_a_name_taken_is_409_unless_replaced(alice: As, settings: Settings) -> None:
    assert alice.put("/api/v1/files/a.img", data=b"first").status_code == 201
    again = alice.put("/api/v1/files/a.img", data=b"second")
    assert again.status_code == 409 and "replace=true" in again.json["error"]["message"]
    assert (folder_of(settings, "alice") / "a.img").read_bytes() == b"first"
    assert alice.put("/api/v1/files/a.img?replace=true", data=b"second").status_code == 201
    assert (folder_of(settings, "alice") / "a.img").read_bytes() == b"second"
    assert alice.put("/api/v1/files/a.img?replace=yes", data=b"x").status_code == 400


def test_a_symlink_planted_in_the_folder_is_never_followed(alice: As, settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    folder = folder_of(settings, "alice")
    folder.mkdir()
    (folder / "a.img").symlink_to(outside)
    assert alice.put("/api/v1/files/a.img", data=b"evil").status_code == 409
    assert alice.put("/api/v1/files/a.img?replace=true", data=b"evil").status_code == 201
    assert outside.read_bytes() == b"precious"
    assert not (folder / "a.img").is_symlink() and (folder / "a.img").read_bytes() == b"evil"


def test_a_symlink_in_place_of_the_folder_is_never_followed(alice: As, settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder_of(settings, "alice").symlink_to(elsewhere)
    refused = alice.put("/api/v1/files/a.img", data=b"x")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "folder_unusable"
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("name", ["a%2Fb", "sub/b", ".hidden", "..", ".upload-1234", "x" * 256, "bad%01name",
                                  "caf%C3%A9.img", "%E2%80%AEgpj.exe", "a%5Cb"])
def test_bad_names_are_400(alice: As, settings: Settings, name: str) -> None:
    response = alice.put(f"/api/v1/files/{name}", data=b"x")
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_name", response.json
    assert nothing_in(folder_of(settings, "alice"))


def test_too_large_is_413_and_leaves_nothing(alice: As, settings: Settings) -> None:
    response = alice.put("/api/v1/files/big.img", data=b"x" * (LIMIT + 1))
    assert response.status_code == 413 and response.json["error"]["limit"] == LIMIT
    declared = alice.put("/api/v1/files/big.img", data=b"x", environ_overrides={"CONTENT_LENGTH": str(2**40)})
    assert declared.status_code == 413
    assert nothing_in(folder_of(settings, "alice"))
    assert alice.put("/api/v1/files/ok.img", data=b"x" * LIMIT).status_code == 201


def test_an_upload_without_a_body_is_400(alice: As, settings: Settings) -> None:
    response = alice.put("/api/v1/files/empty.img")
    assert response.status_code == 400 and response.json["error"]["code"] == "no_body"
    assert nothing_in(folder_of(settings, "alice"))


def test_a_body_shorter_than_announced_leaves_nothing(alice: As, settings: Settings) -> None:
    response = alice.put("/api/v1/files/short.img", data=b"x" * 1000, environ_overrides={"CONTENT_LENGTH": "5000"})
    assert response.status_code == 400 and response.json["error"]["code"] == "incomplete"
    assert nothing_in(folder_of(settings, "alice"))


def test_a_user_being_deleted_uploads_nothing(admin: As, alice: As, settings: Settings, store: Store) -> None:
    alice.create_vm()
    assert admin.delete("/api/v1/users/alice?cascade=true").status_code == 202
    assert alice.put("/api/v1/files/late.img", data=b"x").status_code == 401
    assert not folder_of(settings, "alice").exists()


def test_user_creation_makes_the_folder_and_deletion_removes_it(admin: As, settings: Settings) -> None:
    assert admin.post("/api/v1/users", json={"name": "carol"}).status_code == 201
    folder = folder_of(settings, "carol")
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert admin.delete("/api/v1/users/carol").status_code == 204
    assert not folder.exists()


# -- under gunicorn ---------------------------------------------------------------------------------


def _user(store: Store, name: str = "dave") -> str:
    _, token = create_user(store, name, Role.USER)
    return token


def _headers(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream", **more}


def test_a_chunked_upload_past_the_limit_is_413_and_leaves_nothing(gunicorn: int, store: Store,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    token = _user(store)
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
    blocks = (b"x" * 65536 for _ in range(UPLOAD_MAX // 65536 + 2))
    conn.request("PUT", "/api/v1/files/big.img", body=blocks, headers=_headers(token), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413, response.read()
    conn.close()
    assert os.listdir(tmp_path / "www" / "dave") == []
    status, stored = call(gunicorn, "PUT", "/api/v1/files/small.img", raw=b"y" * 100_000,
                          headers=_headers(token), body=None)
    assert status == 201 and stored["size"] == 100_000


def test_an_aborted_upload_leaves_nothing(gunicorn: int, store: Store, tmp_path: Path) -> None:  # noqa: F811
    token = _user(store)
    client = socket.create_connection(("127.0.0.1", gunicorn))
    client.sendall(f"PUT /api/v1/files/cut.img HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Length: {UPLOAD_MAX}\r\n\r\n".encode() + b"z" * 1_000_000)
    folder = tmp_path / "www" / "dave"
    wait_until(lambda: folder.is_dir() and os.listdir(folder), 20, "the upload begun")
    client.close()
    wait_until(lambda: os.listdir(folder) == [], 20, "the aborted upload removed")


def test_an_upload_longer_than_the_read_timeout_is_not_cut_off(gunicorn: int, store: Store,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """The read deadline meant for a request's headers cut every upload taking longer than it."""
    token = _user(store)
    block = b"s" * (1024 * 1024)
    seconds = READ_TIMEOUT + 2

    def steady() -> object:
        for _ in range(seconds):
            yield block
            time.sleep(1)

    conn = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
    conn.request("PUT", "/api/v1/files/slow.img", body=steady(),
                 headers=_headers(token, **{"Content-Length": str(len(block) * seconds)}))
    response = conn.getresponse()
    assert response.status == 201, response.read()
    conn.close()
    assert (tmp_path / "www" / "dave" / "slow.img").stat().st_size == len(block) * seconds



class _RemovingFolder(io.BytesIO):
    """A body that removes the uploader's folder after its first block, as a cascade deletion of the
    user does while an upload of theirs is still arriving."""

    def __init__(self, folder: Path, data: bytes) -> None:
        super().__init__(data)
        self.folder, self.reads = folder, 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads == 2:
            shutil.rmtree(self.folder)
        return super().read(size)


def test_a_folder_removed_during_an_upload_is_409_and_leaves_nothing(alice: As, settings: Settings) -> None:
    folder = folder_of(settings, "alice")
    data = b"r" * (LIMIT // 2)
    response = alice.put("/api/v1/files/gone.img", input_stream=_RemovingFolder(folder, data),
                         headers={"Content-Length": str(len(data))})
    assert response.status_code == 409 and response.json["error"]["code"] == "folder_unusable", response.json
    assert not folder.exists()


def test_an_upload_folder_the_api_cannot_write_is_503_not_500(alice: As, app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.upload_dir.rmdir()
    settings.upload_dir.write_text("not a folder")  # as a misconfigured UCLOUD_UPLOAD_DIR
    response = alice.put("/api/v1/files/a.img", data=b"x")
    assert response.status_code == 503 and response.json["error"]["code"] == "uploads_unavailable"


def test_an_upload_past_the_users_quota_is_413_counting_files_not_registered_yet(admin: As, alice: As,
                                                                                  settings: Settings) -> None:
    assert admin.put("/api/v1/users/alice/quota", json={"upload_bytes": 1000}).status_code == 200
    assert alice.put("/api/v1/files/a.img", data=b"a" * 600).status_code == 201
    refused = alice.put("/api/v1/files/b.img", data=b"b" * 600)  # a.img is not registered yet: it counts
    assert refused.status_code == 413 and refused.json["error"]["code"] == "quota_exceeded", refused.json
    assert "upload_bytes leaves 400 bytes" in refused.json["error"]["message"]
    assert alice.put("/api/v1/files/a.img?replace=true", data=b"c" * 1000).status_code == 201, "a.img given back"
    assert sorted(os.listdir(folder_of(settings, "alice"))) == ["a.img"]
