"""The app's own plumbing around Flask: what it remembers of the functions Flask calls."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from flask import Flask, Response, after_this_request


def test_a_function_made_for_one_request_is_not_kept_after_it(app: Flask) -> None:
    """The app remembers, for its own views and hooks (made once), that Flask need not wrap them; a
    function made for one request (`after_this_request`, a class-based view's bound method) was
    remembered too, and kept with everything it holds for the worker's life, one per request."""
    made: list[weakref.ref[Any]] = []
    healthz = app.view_functions["healthz"]

    def probed() -> Any:
        def after(response: Response) -> Response:
            return response

        made.append(weakref.ref(after))
        after_this_request(after)
        return healthz()

    app.view_functions["healthz"] = probed
    client = app.test_client()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    gc.collect()
    assert len(made) == 3 and [ref() for ref in made] == [None] * 3
