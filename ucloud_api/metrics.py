"""The API's request metrics, and `GET /metrics` (without authentication: it holds counts and
timings per route, never a name, a key or an id, and Prometheus scrapes it without a token)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

from ucloud_common.metrics import FAST_BUCKETS, exposition

PATH = "/metrics"
# A request that matched no route (a 404, a probe for /wp-admin) is counted under this one label:
# the raw path would give every scanner on the internet its own series.
UNMATCHED = "unmatched"
# The same for a method: gunicorn passes any token of 3-20 characters (`PROBE1`, `PROBE2`, …), and each
# would add a counter and a histogram to every worker's file, summed by each scrape, without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"

REQUESTS = Counter("ucloud_api_requests_total", "Requests answered, per route (Flask's rule, e.g. "
                   "/api/v1/vms/<uuid>), method and status.", ["route", "method", "status"])
REQUEST_SECONDS = Histogram("ucloud_api_request_seconds", "Seconds from a request's arrival in the app to its "
                            "answer, per route and method.", ["route", "method"], buckets=FAST_BUCKETS)


# Each (route, method, status)'s counter and histogram, found once: `labels` takes a lock and checks
# its arguments on every call. Bounded by the routes, methods and statuses the app answers.
_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def instrument(app: Flask) -> None:
    """Count and time every request of `app` and serve `/metrics`. Called before any other
    `before_request`, so that a request refused by one (a 401) is still counted and timed."""

    @app.before_request
    def started() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def answered(response: Response) -> Response:
        rule, method = request.url_rule, request.method
        route = rule.rule if rule is not None else UNMATCHED
        method = method if method in METHODS else OTHER_METHOD
        key = (route, method, response.status_code)
        series = _series.get(key) or _series.setdefault(key, (REQUESTS.labels(route, method, str(key[2])),
                                                               REQUEST_SECONDS.labels(route, method)))
        series[0].inc()
        began = g.pop("metrics_started", None)
        if began is not None:
            series[1].observe(time.perf_counter() - began)
        return response

    @app.get(PATH)
    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, content_type=content_type)
