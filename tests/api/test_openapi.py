from flask import Flask

from ucloud_api.openapi import ROUTES, flask_routes


def test_every_route_is_described(app: Flask) -> None:
    assert flask_routes(app) == set(ROUTES)


def test_the_document_is_served_without_a_token(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    spec = response.json
    assert spec["openapi"].startswith("3.")
    assert spec["paths"]["/api/v1/vms/{uuid}/{action}"]["post"]["responses"]["409"]
    for schema in ("VM", "VMCreate", "Error", "Network", "Specs"):
        assert schema in spec["components"]["schemas"]


def test_a_wrong_method_is_405_with_allow(alice) -> None:  # type: ignore[no-untyped-def]
    """The app's JSON error handler dropped Werkzeug's Allow header (RFC 9110 requires it on a 405)."""
    response = alice.put("/api/v1/vms")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert response.content_type == "application/json"


def test_allow_lists_only_the_methods_a_path_has(alice) -> None:  # type: ignore[no-untyped-def]
    """`/vms/<uuid>/events` also matched the POST route of the actions, so Allow offered POST."""
    vm = alice.create_vm()
    allowed = alice.client.options(f"/api/v1/vms/{vm['uuid']}/events",
                                   headers={"Authorization": f"Bearer {alice.token}"}).headers["Allow"]
    assert "POST" not in allowed.split(", ")


def test_the_document_says_what_the_app_answers(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/api/v1/openapi.json").json["paths"]
    delete_vm = paths["/api/v1/vms/{uuid}"]["delete"]
    assert {"202", "204", "412"} <= set(delete_vm["responses"])  # 204: a VM no host had yet goes at once
    name = delete_vm["parameters"][0]["schema"]
    assert name["pattern"] and name["maxLength"] == 63
    assert paths["/api/v1/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    action = paths["/api/v1/vms/{uuid}/{action}"]["post"]
    assert "delete" not in next(p for p in action["parameters"] if p["name"] == "action")["schema"]["enum"]
    assert {p["name"] for p in action["parameters"]} >= {"Idempotency-Key", "If-Match"}
    assert {"412", "422", "429"} <= set(action["responses"])


def test_a_list_filter_that_is_no_name_is_400(admin) -> None:  # type: ignore[no-untyped-def]
    """`GET /vms?owner=` listed every VM (an empty filter meant none), and `?user=` took any text."""
    for path in ("/api/v1/vms?owner=", "/api/v1/vms?host=a%0Ab", "/api/v1/tokens?user=" + "x" * 64):
        response = admin.get(path)
        assert response.status_code == 400 and response.json["error"]["code"] == "bad_request", path
