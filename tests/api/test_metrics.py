"""The API's /metrics: without authentication, per route and status, with etcd's calls; and under
gunicorn, every worker's requests summed."""

from __future__ import annotations

import urllib.request

from flask.testing import FlaskClient

from tests.api.conftest import As
from tests.api.test_processes import gunicorn  # noqa: F401 (a fixture)
from tests.helpers.metrics import Samples, parse, scrape, total, value

VMS_ROUTE = "/api/v1/vms"


def metrics(client: FlaskClient) -> Samples:
    response = client.get("/metrics")  # no token
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    return parse(response.get_data(as_text=True))


def test_creating_a_vm_moves_its_route_counter_and_etcd_transactions(client: FlaskClient, alice: As) -> None:
    before = metrics(client)
    alice.create_vm("web1")
    refused = alice.post(VMS_ROUTE, json={"name": "web1", "specs": {"cpu": 1, "ram": 1, "ssd": 10}, "image": "tiny"})
    assert refused.status_code == 409
    after = metrics(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ucloud_api_requests_total", route=VMS_ROUTE, method="POST", status="201") == 1
    assert moved("ucloud_api_requests_total", route=VMS_ROUTE, method="POST", status="409") == 1
    assert moved("ucloud_api_request_seconds_count", route=VMS_ROUTE, method="POST") == 2
    assert moved("ucloud_etcd_call_seconds_count", operation="txn") >= 1  # the VM, its name, its event
    assert moved("ucloud_etcd_call_seconds_count", operation="range") >= 1


def test_routes_are_templates_and_unknown_paths_one_label(client: FlaskClient, alice: As) -> None:
    vm = alice.create_vm("web1")
    assert alice.get(f"{VMS_ROUTE}/{vm['uuid']}").status_code == 200
    assert alice.get("/wp-admin/install.php").status_code == 404
    assert client.get(VMS_ROUTE).status_code == 401  # no token: refused, and still counted
    after = metrics(client)
    assert value(after, "ucloud_api_requests_total", route=f"{VMS_ROUTE}/<uuid>", method="GET", status="200") >= 1
    assert value(after, "ucloud_api_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert value(after, "ucloud_api_requests_total", route=VMS_ROUTE, method="GET", status="401") >= 1
    assert not any(vm["uuid"] in str(labels) or "wp-admin" in str(labels) for _, labels in after)


def test_under_gunicorn_metrics_answer_without_a_token_and_sum_every_worker(gunicorn: int) -> None:  # noqa: F811
    url = f"http://127.0.0.1:{gunicorn}"
    before = total(scrape(f"{url}/metrics"), "ucloud_api_requests_total", route="/healthz")
    for _ in range(20):  # each on a new connection: both workers answer some
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            assert response.status == 200
    after = scrape(f"{url}/metrics")
    assert total(after, "ucloud_api_requests_total", route="/healthz") - before == 20
    assert total(after, "ucloud_etcd_call_seconds_count", operation="range") >= 20  # each /healthz reads the revision


def test_a_method_nobody_serves_adds_no_series(client: FlaskClient) -> None:
    # gunicorn passes any method of 3-20 letters, digits and !#$%&'*+-.^_`|~: as a label, each one a
    # scanner invents would add series (and, with every worker's files, bytes on disk) without end.
    for n in range(30):
        assert client.open("/healthz", method=f"PROBE{n}").status_code == 405
    after = metrics(client)
    assert not any(value.startswith("PROBE") for _, labels in after for _, value in labels)
    assert value(after, "ucloud_api_requests_total", route="unmatched", method="other", status="405") == 30
