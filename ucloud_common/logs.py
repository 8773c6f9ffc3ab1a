"""One logging setup for every ucloud process.

Lines are `time level logger: message`, with the object a line is about named in the message
(`vm=<uuid>`, `host=<name>`), so that `grep vm=<uuid>` over all daemons' logs tells one VM's story.
A message is always one line of printable text (`quoting.printable`): a file name or a request
field holding a newline cannot forge a line, nor an escape sequence rewrite an admin's terminal.
"""

from __future__ import annotations

import logging
import sys
import time

from ucloud_common.quoting import printable

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class PrintableFormatter(logging.Formatter):
    """Escapes what is not printable in the message (a traceback, appended after it, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (journald or the quick start's log files pick it up) in UTC."""
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
