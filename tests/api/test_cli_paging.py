"""The CLI's lists follow the API's pages (`X-Ucloud-Continue`) to the last, against the real app
served over HTTP on a real etcd (no agent: nothing boots)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.api.conftest import As
from ucloud_cli.client import Client


@pytest.fixture
def url(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_lists_and_finds_follow_every_page(url: str, alice: As, monkeypatch: pytest.MonkeyPatch) -> None:
    made = {alice.create_vm(f"p{i}")["uuid"] for i in range(7)}
    monkeypatch.setattr(Client, "PAGE", 3)
    pages = []
    real_call = Client._call
    monkeypatch.setattr(Client, "_call", lambda self, *a: pages.append(a[1]) or real_call(self, *a))
    api = Client(url, alice.token)
    assert {vm["uuid"] for vm in api.list("/vms")} == made
    assert len(pages) == 3 and "continue=" in pages[-1]
    # A name on the last page is found (the name lookup lists every page).
    last = max(api.list("/vms"), key=lambda vm: vm["uuid"])
    assert api.find("vms", last["name"], "VM")["uuid"] == last["uuid"]


def test_the_cli_sends_its_writes_revision_back(url: str, alice: As, monkeypatch: pytest.MonkeyPatch) -> None:
    api = Client(url, alice.token)
    made = api.request("POST", "/networks", {"name": "n"})
    sent = []
    real_open = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda r, **kw: sent.append(r.get_header("X-ucloud-revision"))
                        or real_open(r, **kw))
    assert made["uuid"] in {n["uuid"] for n in api.list("/networks")}
    assert sent and int(sent[0]) >= 1
