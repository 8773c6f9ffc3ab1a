# gunicorn settings for ucloud-api (`ucloud-api serve` uses this file; --bind and --workers override).
import multiprocessing
import os
import shutil
import tempfile

# Threaded workers (gthread) with a deadline on reading each request (ucloud_api/worker.py): a slow
# client holds neither a process nor, for longer than UCLOUD_API_READ_TIMEOUT, a thread (with sync
# workers, 4 connections sending a header line every 2 s left a 2-worker API unanswered for 60 s).
# Idle kept-alive connections wait in the worker's selector, not in a thread. A request is a few etcd
# round trips that release the GIL, so threads add concurrency; their number is bounded per process.
# One process per core: each runs Python on one core at a time (the GIL), and keeps its own read cache
# (≈ 50 MiB and 9 etcd watches per 10,000 VMs). gunicorn's 2 × cores + 1 is for sync workers, one
# request per process: measured with threads (tests/bench/api.py, 2 cores, README), 5 processes
# instead of 2 had every p99 10-20 ms worse (context switches among 5 processes and wrk on 2 cores).
workers = multiprocessing.cpu_count()
worker_class = "ucloud_api.worker.ReadDeadlineWorker"
threads = 16  # (a long upload holds one for its length)
# The app is created in each worker after the fork: gRPC channels do not survive a fork.
preload_app = False
timeout = 30  # a request stuck longer than this (etcd timeout is 5 s) means a wedged worker
graceful_timeout = 10
keepalive = 5  # seconds an idle connection is kept (in the selector, holding no thread)
# Bodies are limited to 1 MiB by the app (also when chunked), but uploads, which it streams to disk
# (ucloud_api/uploads.py: UCLOUD_UPLOAD_MAX_SIZE); headers and the request line here.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# The access log is the app's (ucloud_api/audit.py): only it knows the user and the request id, and it
# follows UCLOUD_LOG_FORMAT. gunicorn's own would log every request a second time.
accesslog = None
errorlog = "-"
# Prometheus metrics of every worker (ucloud_common/metrics.py): each worker keeps its figures in
# files of one directory and /metrics on any worker sums them all. A fresh directory per start (files
# left by an earlier run would be counted again), set here in the master, before it forks the workers
# that import prometheus-client (which chooses the mode when imported); removed when the master exits.
# A reload (SIGHUP) reads this file again in the same master: the directory is kept (the counts go on)
# and still removed at the end. An operator who sets PROMETHEUS_MULTIPROC_DIR must empty it before
# each start. (A dead worker's files stay while the master runs: its counts are part of the totals.)
_MADE = "UCLOUD_API_METRICS_DIR_MADE"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_MADE] = tempfile.mkdtemp(prefix="ucloud-api-metrics-")


def on_exit(server: object) -> None:
    if os.environ.get(_MADE) == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(os.environ[_MADE], ignore_errors=True)
