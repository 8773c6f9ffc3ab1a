# gunicorn settings for ucloud-api (`ucloud-api serve` uses this file; --bind and --workers override).
import multiprocessing

# Sync workers: each request is a few etcd round trips of under a millisecond, so a process per
# core and a half keeps the CPUs busy without an event loop.
workers = 2 * multiprocessing.cpu_count() + 1
worker_class = "sync"
# The app is created in each worker after the fork: gRPC channels do not survive a fork.
preload_app = False
timeout = 30  # a request stuck longer than this (etcd timeout is 5 s) means a wedged worker
graceful_timeout = 10
keepalive = 5
# Bodies are limited to 1 MiB by the app (also when chunked); headers and the request line here.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
