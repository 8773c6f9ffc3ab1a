"""One logging setup for every ucloud process.

Lines are `time level logger: message`, with the object a line is about named in the message
(`vm=<uuid>`, `host=<name>`), so that `grep vm=<uuid>` over all daemons' logs tells one VM's story.
A line written while acting on an API request ends with `request=<id>` (`acting_for`): the API's
for the request it answers, the scheduler's and the agent's for the last request written on the VM
they act on, so that `grep request=<id>` follows one request through every daemon.
A message is always one line of printable text (`quoting.printable`): a file name or a request
field holding a newline cannot forge a line, nor an escape sequence rewrite an admin's terminal.
With `UCLOUD_LOG_FORMAT=json`, each entry is one JSON object per line instead, in ASCII (every other
character escaped as `\\uXXXX`, so the same holds).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from ucloud_common.quoting import printable

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Fields a line may carry besides its message (`log.info(..., extra={...})`): JSON lines have them as
# their own fields; text lines have them in the message already.
FIELDS = ("user", "method", "path", "status", "duration_ms")

_request_id: ContextVar[str] = ContextVar("ucloud_request_id", default="")


def begin_request(request_id: str) -> Token[str]:
    """Lines logged in this thread from now carry `request_id` ("" for none), until `end_request`."""
    return _request_id.set(request_id)


def end_request(token: Token[str]) -> None:
    _request_id.reset(token)


@contextmanager
def acting_for(request_id: str) -> Iterator[None]:
    """Lines logged in this thread within the block carry `request_id` ("" for none)."""
    token = begin_request(request_id)
    try:
        yield
    finally:
        end_request(token)


def current_request_id() -> str:
    return _request_id.get()


class PrintableFormatter(logging.Formatter):
    """Escapes what is not printable in the message (a traceback, appended after it, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        request_id = _request_id.get()
        if request_id:
            record.message += f" request={request_id}"
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per entry: time, level, logger, message, request_id if any, the `FIELDS` given,
    and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime(DATE_FORMAT, time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({field: getattr(record, field) for field in FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ASCII: JSON escapes only the C0 controls, and a name or path may hold a C1 one (NEL, CSI), a
        # line separator or a bidi override, which a line splitter or an admin's terminal would obey.
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Log to stderr (journald or the quick start's log files pick it up) in UTC."""
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JSONFormatter()
    else:
        formatter = PrintableFormatter(FORMAT, DATE_FORMAT)
        formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC and the etcd client are chatty at DEBUG and say nothing an operator needs.
    for noisy in ("grpc", "pyetcd"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
