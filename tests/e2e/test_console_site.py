"""The console site in a real headless Chromium (Debian's, driven by Playwright) on real parts: the API
under gunicorn, an agent running tiny guests under QEMU, the host's console proxy. Alice logs in, sees
her VM and not bob's, types into its serial console and sees its screen; every ticket that must not
open a console does not, and says why on the page; a wrong password is refused, then throttled.

The screen's screenshot is kept in test-artifacts/ (beside the repository's README)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers.etcd import free_port
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.console import PROXIES, TICKETS, ConsoleKind, ConsoleTicket, digest_of, new_ticket
from ucloud_common.vm import VMS

CHROMIUM = "/usr/bin/chromium"  # Playwright's own download is out of reach here (LAB.md); Debian's is installed
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PASSWORDS = {"alice": "alice's long password", "bob": "bob's long password"}
SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}
pytestmark = pytest.mark.usefixtures("console_assets")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("site"), UCLOUD_CONSOLE_PORT=str(free_port())) as the_cluster:
        the_cluster.start_console_proxy("h1")
        for name, password in PASSWORDS.items():
            status, body = the_cluster.call("POST", "/api/v1/users", {"name": name, "password": password})
            assert status == 201, body
        yield the_cluster


@pytest.fixture(scope="module")
def vms(cluster: Cluster) -> dict[str, str]:
    """alice's and bob's VMs, booted: owner → uuid."""
    made = {}
    for owner in PASSWORDS:
        status, vm = call_as(cluster, owner, "POST", "/api/v1/vms", {"name": f"{owner}s-vm", "specs": SPECS,
                                                                     "image": "tiny"})
        assert status == 201, vm
        made[owner] = vm["uuid"]
    for uuid in made.values():
        wait_until(lambda: BOOTED in cluster.serial("h1", uuid), 180, "the guest's boot")  # noqa: B023
        cluster.wait(uuid, "RUNNING")
    return made


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        the_browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield the_browser
        the_browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    the_page = context.new_page()
    yield the_page
    context.close()


def call_as(cluster: Cluster, user: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    """An API call with a token `user` logs in for (the API's own login, not the site's)."""
    saved = cluster.token
    status, login = cluster.call("POST", "/api/v1/login", {"name": user, "password": PASSWORDS[user]})
    assert status == 201, login
    cluster.token = login["token"]
    try:
        return cluster.call(method, path, body)
    finally:
        cluster.token = saved


def site(cluster: Cluster) -> str:
    return f"http://127.0.0.1:{cluster.api_port}/console/"


def log_in(page: Page, cluster: Cluster, user: str, password: str) -> None:
    page.goto(site(cluster))
    page.get_by_label("Name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_alice_sees_her_vm_types_into_its_serial_console_and_sees_its_screen(
        cluster: Cluster, vms: dict[str, str], page: Page) -> None:
    log_in(page, cluster, "alice", PASSWORDS["alice"])
    row = page.locator(f'tr[data-vm="{vms["alice"]}"]')
    expect(row.locator(".status")).to_have_text("RUNNING")
    expect(page.locator("#vms")).not_to_contain_text("bobs-vm")
    assert page.locator(f'tr[data-vm="{vms["bob"]}"]').count() == 0

    row.get_by_role("button", name="Serial").click()
    page.wait_for_url("**/console/serial")  # the ticket was in the fragment; the page dropped it
    terminal = page.locator(".xterm-rows")
    expect(terminal).to_contain_text(BOOTED, timeout=30_000)  # from the serial log, before we connected
    page.locator(".xterm-helper-textarea").focus()
    # The guest's shell may still be starting: type until it answers.
    wait_until(lambda: _typed(page, "echo ucloud-$((6 * 7))-ok"), 60, "the serial shell's answer")

    page.go_back()
    page.locator(f'tr[data-vm="{vms["alice"]}"]').get_by_role("button", name="Screen").click()
    page.wait_for_url("**/console/vnc")
    expect(page.locator("#state")).to_have_text("connected", timeout=30_000)
    wait_until(lambda: _drawn(page) > 0.01, 30, "the screen's first frame")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-screen.png"))


def test_a_stopped_vm_says_start_it_first(cluster: Cluster, vms: dict[str, str], page: Page) -> None:
    status, body = call_as(cluster, "bob", "POST", f"/api/v1/vms/{vms['bob']}/shutdown")
    assert status == 202, body
    cluster.wait(vms["bob"], "STOPPED")
    log_in(page, cluster, "bob", PASSWORDS["bob"])
    page.locator(f'tr[data-vm="{vms["bob"]}"]').get_by_role("button", name="Serial").click()
    expect(page.locator("#message")).to_have_text("the VM is STOPPED: start it first")


def test_tickets_that_must_not_open_a_console_do_not_and_the_page_says_why(
        cluster: Cluster, vms: dict[str, str], page: Page) -> None:
    alices = vms["alice"]

    def ticket() -> dict[str, str]:
        status, body = call_as(cluster, "alice", "POST", f"/api/v1/vms/{alices}/console", {"type": "serial"})
        assert status == 201, body
        return body

    used = ticket()
    page.goto(used["page"])
    expect(page.locator("#state")).to_have_text("connected")
    second = page.context.new_page()
    second.goto(used["page"])
    expect(second.locator("#state")).to_contain_text("the ticket was used")

    expired = ticket()
    _revoke_lease_of(cluster, digest_of(expired["ticket"]))  # what etcd does when its 60 s are up
    _open(page, expired["page"])
    expect(page.locator("#state")).to_contain_text("has expired")

    # bob cannot get a ticket for alice's VM, and one made for him anyway (a stale or forged record) is refused.
    assert call_as(cluster, "bob", "POST", f"/api/v1/vms/{alices}/console", {"type": "serial"})[0] == 404
    assert "the ticket's user may not see" in _page_with(cluster, page, "bob", alices, "h1")
    # A ticket given while the VM was on another host, or for a VM that has since moved away.
    assert "the ticket is for host h9, this is h1" in _page_with(cluster, page, "alice", alices, "h9")
    # A link to the page whose fragment names a websocket of someone else's (a fake terminal on this
    # site's address, asking for a password): the page opens nothing.
    _open(page, f"{site(cluster)}serial#wss://attacker.example/serial")
    expect(page.locator("#state")).to_have_text("refused: wss://attacker.example is no console proxy of this site")
    bobs = vms["bob"]
    cluster.store.update(VMS, bobs, lambda vm: vm.evolve(hostname="/v1/host/h2"))
    assert "no longer runs on this host" in _page_with(cluster, page, "bob", bobs, "h1")


def test_a_wrong_password_is_refused_then_throttled(cluster: Cluster, page: Page) -> None:
    log_in(page, cluster, "alice", "not alice's password")
    expect(page.locator("#message")).to_have_text("wrong name or password")
    for _ in range(cluster.store.settings.login_failures):
        log_in(page, cluster, "alice", "not alice's password")
    expect(page.locator("#message")).to_contain_text("too many wrong passwords")
    log_in(page, cluster, "alice", PASSWORDS["alice"])
    expect(page.locator("#message")).to_contain_text("too many wrong passwords")  # her own, too, for now


def _typed(page: Page, command: str) -> bool:
    page.keyboard.type(command + "\n")
    try:
        expect(page.locator(".xterm-rows")).to_contain_text("ucloud-42-ok", timeout=5_000)
    except AssertionError:
        return False
    return True


def _drawn(page: Page) -> float:
    """The share of the screen's canvas pixels that are not black."""
    return page.evaluate("""() => {
        const canvas = document.querySelector("#screen canvas");
        if (!canvas || !canvas.width) return 0;
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0;
        for (let i = 0; i < pixels.length; i += 4) {
            if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 0) lit++;
        }
        return lit / (pixels.length / 4);
    }""")


def _page_with(cluster: Cluster, page: Page, user: str, vm: str, host: str) -> str:
    """What the serial page says of a ticket stored as given to `user` for `vm` on `host`."""
    text, digest = new_ticket()
    cluster.store.create(TICKETS, digest, ConsoleTicket(digest=digest, user=user, vm=vm, host=host,
                                                        kind=ConsoleKind.SERIAL))
    proxy = cluster.store.get(PROXIES, "h1")
    assert proxy is not None
    _open(page, f"{site(cluster)}serial#{proxy.value.url}/serial?ticket={text}")
    state = page.locator("#state")
    expect(state).to_contain_text("closed")
    return state.inner_text()


def _open(page: Page, url: str) -> None:
    page.goto("about:blank")  # a URL that differs only in its fragment would not load the page again
    page.goto(url)


def _revoke_lease_of(cluster: Cluster, digest: str) -> None:
    assert cluster.etcd is not None
    etcdctl = ["etcdctl", f"--endpoints={cluster.etcd.endpoint}"]
    found = subprocess.run([*etcdctl, "get", f"{TICKETS.prefix}{digest}", "--write-out=json"], check=True,
                           capture_output=True, text=True).stdout
    lease = json.loads(found)["kvs"][0]["lease"]
    subprocess.run([*etcdctl, "lease", "revoke", format(lease, "x")], check=True, capture_output=True)
