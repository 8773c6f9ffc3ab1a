"""schemathesis against openapi.json as `st run --checks all` would run it: every check it has
(server errors, documented statuses, content types and headers, response schemas, positive data
accepted, negative data refused, undeclared methods answered 405 with `Allow`, authentication not
ignored, use after free, resource availability, …) over its phases — examples, coverage, fuzzing,
and the stateful phase, which chains operations by the links it infers from `Location` headers and
path parameters (it reports how many transitions it found; this test asserts there are some).

It runs once as an admin and once as a user (alice, who owns a VM and a network the admin's run
also sees). Excluded, because they would destroy the fixture the run stands on (and nothing else is):
- `DELETE /api/v1/users/<the caller>`: the fuzzer may create a second admin, then delete the one
  whose token it sends; every later answer would be a 401.
- `DELETE /api/v1/tokens/<the caller's token id>`: the same, by revoking that token (the stateful
  phase finds its id in `GET /api/v1/tokens`).
Both stay covered by tests/api/test_passwords_and_tokens.py and test_tenancy_and_input.py.

Loosened, because a schema cannot say it: `positive_data_acceptance` takes a 412 (an If-Match
naming an ETag that is no longer current is a failed precondition, not refused data), and a 422
from the four operations whose bodies name other objects (an image, file, store, network, SSH key
that must exist and be yours) or hold what only a parser can judge (an SSH key's blob, an IPv6
/64). A body that breaks the schema itself is still caught: its 422 is what the schema predicts.
Left out: a paged list's `continue` other than empty. It is an opaque token that only the API makes
(any string fits the schema, and one the API did not make is a 400): tests/api/test_cache.py holds
bad tokens to their 400s and pages through with good ones; `limit` is fuzzed here as any parameter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.transport.wsgi import WSGI_TRANSPORT

from tests.api.conftest import As
from ucloud_api.openapi import ROUTES, document

# Enough for every phase to reach every operation and for stateful chains of a few steps (the test
# checks both): 30-70 s per caller on a 2-core machine (the admin's makes users: Argon2 hashes).
MAX_EXAMPLES = 10
STATEFUL_STEPS = 20
POSITIVE = ["2xx", "401", "403", "404", "409", "412", "429"]  # schemathesis's default, and 412
SEMANTIC_BODIES = ("/api/v1/vms", "/api/v1/images", "/api/v1/networks", "/api/v1/ssh-keys")


def _without_socket_options(send: Any) -> Any:
    """schemathesis 4.32.5's WSGI transport passes `max_redirects` on to Werkzeug's test client when
    `ignored_auth` sends its probe without a session (a TypeError, reported as an error of the run);
    an in-process call has no redirects, TLS or proxies to configure."""

    def wrapped(case: Any, *, session: Any = None, **kwargs: Any) -> Any:
        for name in ("max_redirects", "verify", "cert", "proxies"):
            kwargs.pop(name, None)
        return send(case, session=session, **kwargs)

    return wrapped


def _failures(stream: Iterator[events.EngineEvent]) -> tuple[dict[tuple[str, str], str], int]:
    """(operation, check) → a curl line and the message, for each failing check; and how many
    transitions the stateful phase chained."""
    found: dict[tuple[str, str], str] = {}
    transitions = 0
    for event in stream:
        if isinstance(event, events.PhaseStarted) and isinstance(event.payload, events.StatefulPhasePayload):
            transitions = event.payload.transitions_selected
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            found[(getattr(event, "label", "run"), "error")] = repr(event.value)
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        found.setdefault((event.recorder.label, check.name), check.failure_info.code_sample
                                         + "\n" + check.failure_info.failure.message)
    return found, transitions


@pytest.mark.parametrize("caller", ["admin", "alice"])
def test_all_checks_and_the_stateful_phase_find_nothing(app: Flask, admin: As, alice: As, caller: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    alice.create_vm()
    alice.post("/api/v1/networks", json={"name": "n1"})
    who = {"admin": admin, "alice": alice}[caller]
    token_id = who.get("/api/v1/tokens").json[0]["id"]
    config = SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {who.token}"},
        # A 412 answers a well-formed If-Match naming an older ETag (RFC 9110): the data was fine.
        "checks": {"enabled": True, "positive_data_acceptance": {"expected-statuses": POSITIVE}},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "seed": 14,
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        "operations": [{"include-path": path, "include-method": "POST",
                        "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE, "422"]}}}
                       for path in SEMANTIC_BODIES],
    })
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    monkeypatch.setattr(WSGI_TRANSPORT, "send", _without_socket_options(WSGI_TRANSPORT.send))

    @schema.hook
    def filter_case(context: Any, case: Any) -> bool:  # the exclusions of the docstring
        method, path, parameters = case.method.upper(), case.path, case.path_parameters or {}
        return not (method == "DELETE" and (
            (path == "/api/v1/users/{name}" and parameters.get("name") == who.name)
            or (path == "/api/v1/tokens/{token_id}" and parameters.get("token_id") == token_id))
            or (case.query or {}).get("continue"))

    operations = {result.ok().label for result in schema.get_all_operations()}
    # (schemathesis leaves out the operation that serves the schema itself)
    assert operations == {f"{m.upper()} {p}" for m, p in ROUTES} - {"GET /api/v1/openapi.json"}
    started = time.monotonic()
    failures, transitions = _failures(from_schema(schema).execute())
    assert not failures, "\n\n".join(f"{op} {check}:\n{text}" for (op, check), text in sorted(failures.items()))
    assert transitions > 0, "the stateful phase found no links to follow"
    # The run stood on its fixture to the end: the caller and its token still work.
    assert who.get("/api/v1/tokens").status_code == 200
    print(f"schemathesis as {caller}: {len(operations)} operations, {transitions} transitions, "
          f"{time.monotonic() - started:.0f} s")


def test_the_document_is_what_the_app_serves(app: Flask) -> None:
    assert app.test_client().get("/api/v1/openapi.json").json == document(app)
