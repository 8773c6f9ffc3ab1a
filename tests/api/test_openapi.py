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
