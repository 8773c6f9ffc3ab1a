"""A leader-election candidate as a separate process, so tests can kill -9 and SIGSTOP it.

Usage: python -m tests.helpers.candidate ENDPOINT ELECTION CANDIDATE TTL

Prints `LEADER <candidate>` when it wins. Then, every 0.1 s, it writes its name into the record
/test/leader/mark guarded by the guard it got when it won (as a leader that has not noticed being
deposed would), printing `WROTE` or `REFUSED` for each attempt.
"""

from __future__ import annotations

import sys
import threading
import time

from ucloud_common.config import load_settings
from ucloud_common.logs import setup_logging
from ucloud_common.record import Family, Record
from ucloud_common.store import Election, GuardFailed, Store, StoreUnavailable


class Mark(Record):
    writer: str


MARKS = Family("/test/leader/", Mark)


def main() -> None:
    endpoint, name, candidate, ttl = sys.argv[1:5]
    setup_logging("INFO")
    store = Store(load_settings(etcd_endpoints=endpoint, etcd_timeout=1.0, leader_lease_ttl=int(ttl)))
    election = Election(store, name, candidate, int(ttl))
    election.campaign(threading.Event())
    guard = election.guard
    print(f"LEADER {candidate}", flush=True)
    while True:
        try:
            current = store.get(MARKS, "mark")
            if current is None:
                store.create(MARKS, "mark", Mark(writer=candidate), guard=guard)
            else:
                store.replace(MARKS, "mark", Mark(writer=candidate), current.mod_revision, guard=guard)
            print("WROTE", flush=True)
        except GuardFailed:
            print("REFUSED", flush=True)
        except StoreUnavailable as exc:
            print(f"UNAVAILABLE {exc}", flush=True)
        except Exception as exc:  # a lost race with the other leader is fine, just report it
            print(f"FAILED {type(exc).__name__}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
