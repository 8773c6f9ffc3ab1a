"""The API's gunicorn worker: gunicorn's threaded worker (gthread) and a deadline on reading a request.

gthread keeps idle and kept-alive connections in its selector, not in a thread, and hands a
connection to one of its threads (`threads` per process) only when bytes arrive. Once a thread has
it, though, it reads the request line, headers and body with blocking reads and no overall limit: a
client sending one header line every 2 s holds that thread as long as it likes (with sync workers,
4 such connections left a 2-worker API unanswered for 60 s). Here a request must arrive whole within
UCLOUD_API_READ_TIMEOUT of a thread taking its connection: past it, the connection's reading side is
shut down, the thread's next read ends, gunicorn closes the connection, and the thread is free. A
streamed upload moves its deadline on after each block it reads (`ucloud_api.readdeadline`).

Once the app's read cache holds its first listings, the worker moves every object it has then
out of the garbage collector's sight (`gc.freeze`). The cache's records are the worker's long-lived
objects (≈130,000 for 10,000 VMs), and each full collection, which the collector starts by itself
now and then, traversed them all with the GIL held: 115-150 ms here on a quiet machine, 0.3-0.9 s
under the API benchmark's load, measured with gc.callbacks in each worker: the slowest answers of
a worker were those pauses. Frozen, they are still freed by reference counting when replaced
(records hold no cycles; a resync keeps the objects of unchanged records, `Mirror`), and what
changes later is collected as usual. Once per worker, before it serves much: what lives then is
its modules, settings and cache, not garbage to be.

gunicorn's own `timeout` does not cut long requests here: a gthread worker tells the master it
lives from its main loop, which a thread busy with an upload does not hold up.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from ucloud_api import readdeadline
from ucloud_common.config import load_settings

# How often the deadlines are looked at: a slow client is cut off at most this late.
_CHECK_EVERY = 0.5
# How long a worker waits for its cache's first listings (etcd may be away at start) to freeze them.
_LOAD_WAIT_S = 600.0


class ReadDeadlineWorker(ThreadWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self.read_timeout = load_settings().api_read_timeout
        self._reading: dict[int, tuple[float, Any]] = {}  # id(conn) → (deadline, conn)
        self._reading_lock = threading.Lock()
        threading.Thread(target=self._cut_late_readers, name="read-deadline", daemon=True).start()
        super().init_process()  # runs the worker's loop until it stops

    def load_wsgi(self) -> None:
        super().load_wsgi()
        threading.Thread(target=self._freeze_when_loaded, name="gc-freeze", daemon=True).start()

    def _freeze_when_loaded(self) -> None:
        cache = getattr(self.wsgi, "extensions", {}).get("ucloud.cache")
        if cache is not None and cache.loaded(_LOAD_WAIT_S):
            gc.freeze()
            self.log.info("the read cache is loaded: %d objects frozen out of garbage collection",
                          gc.get_freeze_count())

    def handle(self, conn: Any) -> Any:
        # The deadline also runs while the app answers (the app reads the body itself): a request
        # whose answer takes longer only loses its connection's keep-alive, as its reading side is
        # shut down; the answer is still written.
        self._read_by(conn)
        readdeadline.bind(lambda: self._read_by(conn))
        try:
            return super().handle(conn)
        finally:
            readdeadline.bind(None)
            with self._reading_lock:
                self._reading.pop(id(conn), None)

    def _read_by(self, conn: Any) -> None:
        """`conn` must send what it is asked for within the read timeout from now."""
        with self._reading_lock:
            self._reading[id(conn)] = (time.monotonic() + self.read_timeout, conn)

    def _cut_late_readers(self) -> None:
        while True:
            time.sleep(_CHECK_EVERY)
            now = time.monotonic()
            with self._reading_lock:
                late = [key for key, (deadline, _) in self._reading.items() if deadline <= now]
                conns = [self._reading.pop(key)[1] for key in late]
            for conn in conns:
                self.log.warning("closing the connection of %s: no whole request within %s s",
                                 conn.client, self.read_timeout)
                try:
                    conn.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # already closed
