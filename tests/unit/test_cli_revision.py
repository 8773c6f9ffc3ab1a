"""The CLI keeps the revision of its last write for the next command: `ucloud vm stop x` then
`ucloud vm show x` are two processes, and the second may reach an API worker a few ms behind the
first's write unless it sends that revision back (`X-Ucloud-Revision`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ucloud_cli.client import Client, revisions_path


class _API(BaseHTTPRequestHandler):
    sent: list[str | None] = []
    answer = "0"

    def _reply(self) -> None:
        _API.sent.append(self.headers.get("X-Ucloud-Revision"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Ucloud-Revision", _API.answer)
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _API)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("UCLOUD_API_URL", url)
    monkeypatch.setenv("UCLOUD_TOKEN", "t.secret")
    _API.sent = []
    yield url
    server.shutdown()


def test_the_next_command_sends_the_revision_of_the_last_write(api: str) -> None:
    _API.answer = "42"
    Client.from_environment().request("POST", "/vms/x/stop")
    Client.from_environment().request("GET", "/vms/x")  # another process: a new client
    assert _API.sent == [None, "42"]


def test_the_latest_write_is_kept_not_the_largest(api: str) -> None:
    # An etcd replaced since (a new cluster counts from 1 again) must not leave every later command
    # sending a revision it will never reach.
    _API.answer = "900"
    Client.from_environment().request("POST", "/vms/x/stop")
    _API.answer = "7"
    Client.from_environment().request("POST", "/vms/x/start")
    Client.from_environment().request("GET", "/vms/x")
    assert _API.sent[-1] == "7"


def test_an_unreadable_kept_revision_is_no_revision(api: str) -> None:
    revisions_path().parent.mkdir(parents=True)
    revisions_path().write_text('{"' + api + '": "not a revision"}')
    Client.from_environment().request("GET", "/vms")
    revisions_path().write_text("[garbage")
    Client.from_environment().request("GET", "/vms")
    assert _API.sent == [None, None]
