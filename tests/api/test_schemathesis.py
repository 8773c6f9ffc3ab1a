"""Property-based fuzzing of every operation in openapi.json (schemathesis): no 500, and no
response that breaks the documented schema."""

from __future__ import annotations

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import As
from ucloud_api.openapi import ROUTES, document

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_operation_fails_or_breaks_its_schema(app: Flask, admin: As, alice: As) -> None:
    alice.create_vm()
    alice.post("/api/v1/networks", json={"name": "n1"})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # (schemathesis leaves out the operation that serves the schema itself)
    assert {op.label for op in operations} == {f"{m.upper()} {p}" for m, p in ROUTES} - {"GET /api/v1/openapi.json"}
    for operation in operations:
        for token in (admin.token, alice.token):

            @given(case=operation.as_strategy())
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

            fuzz()


def test_the_document_is_what_the_app_serves(app: Flask) -> None:
    assert app.test_client().get("/api/v1/openapi.json").json == document(app)
