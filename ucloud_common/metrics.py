"""Prometheus metrics every process shares: which registry `/metrics` shows, the endpoint of the
daemons that serve no HTTP otherwise, the etcd calls' figures, and the node exporter's textfile of
the periodic jobs. Each daemon defines its own metrics in its own `metrics` module; every name starts
with `ucloud_` and is listed in the README.

The API runs as several gunicorn workers, each its own process: there the metrics are in
prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, which deploy/gunicorn.conf.py
sets to a fresh directory at each start), and `/metrics` on any worker sums every worker's files.
That mode must be chosen before prometheus-client is first imported, which gunicorn's master does
before forking the workers that import this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    write_to_textfile,
)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Buckets from 1 ms: an etcd read on loopback takes ≈0.3 ms, a transaction ≈2 ms, a call that fails
# over to another member up to `etcd_timeout` (5 s).
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ETCD_CALL_SECONDS = Histogram(
    "ucloud_etcd_call_seconds", "Seconds an etcd call took, failovers to other members included.",
    ["operation"], buckets=FAST_BUCKETS)
ETCD_ERRORS = Counter(
    "ucloud_etcd_errors_total", "etcd calls that failed, by the store error they raised (StoreUnavailable: "
    "no member answered in time; StoreRefused and its kinds: etcd said no).", ["operation", "error"])


class MetricsUnavailable(Exception):
    """The metrics endpoint could not listen where configured; `str()` says where and why. Nothing
    else was started: the daemon may exit with this message and be started again once fixed."""


@contextmanager
def timed_etcd_call(operation: str) -> Iterator[None]:
    """Time one etcd call of `operation` ("range", "txn", …: a fixed word, never a key, so that the
    number of series stays small) and count it as failed when it raises."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        ETCD_ERRORS.labels(operation, type(exc).__name__).inc()
        raise
    finally:
        ETCD_CALL_SECONDS.labels(operation).observe(time.perf_counter() - started)


def registry() -> CollectorRegistry:
    """What `/metrics` shows: in a gunicorn worker every worker's metrics summed, else this process's."""
    if os.environ.get(MULTIPROCESS_DIR):
        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        return summed
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """The body and content type of a `/metrics` answer."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def serve(address: str, port: int, setting: str) -> WSGIServer | None:
    """Serve this process's metrics at http://address:port/metrics in a thread of their own (None
    when `port` is 0: metrics off). `setting` names the port's setting for the error."""
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=address)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot serve /metrics on {address}:{port} ({setting}, UCLOUD_METRICS_ADDRESS): "
                                 f"{exc.strerror or exc}") from None
    return server


def write_textfile(directory: Path | None, job: str, figures: Mapping[str, float]) -> Path | None:
    """Write a periodic job's figures (`ucloud_<job>_<figure>`) and the time of this run to
    `directory/ucloud_<job>.prom` in the node exporter's textfile format, atomically (a temporary
    file renamed over it, so that the exporter never reads half a file); None without a directory."""
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    own = CollectorRegistry()
    prefix = f"ucloud_{job}"
    Gauge(f"{prefix}_last_run_timestamp_seconds", f"When {job}'s last complete run ended (Unix time).",
          registry=own).set(time.time())
    for figure, value in figures.items():
        Gauge(f"{prefix}_{figure}", f"{figure.replace('_', ' ')} in {job}'s last run.", registry=own).set(value)
    path = directory / f"{prefix}.prom"
    write_to_textfile(str(path), own)  # a temporary file beside it (not *.prom: the exporter skips it), renamed
    return path
