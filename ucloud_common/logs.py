"""One logging setup for every ucloud process.

Lines are `time level logger: message`, with the object a line is about named in the message
(`vm=<uuid>`, `host=<name>`), so that `grep vm=<uuid>` over all daemons' logs tells one VM's story.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (journald or the quick start's log files pick it up) in UTC."""
    formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC and the etcd client are chatty at DEBUG and say nothing an operator needs.
    for noisy in ("grpc", "pyetcd"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
