"""Shared leases of events on a real etcd: each retention keeps its events on leases of its own."""

from __future__ import annotations

from ucloud_common.event import BUCKET_MAX_SECONDS, event_leases
from ucloud_common.store import Store

DAY = 24 * 3600.0


def test_processes_of_different_retentions_never_share_a_lease(etcd_store: Store) -> None:
    # Each daemon reads its own config: when the API keeps events 30 days and an agent 7 (or a
    # retention was changed on some hosts only), each one's events must live for its own
    # retention, not for that of whichever process published the hour's lease first.
    stores = {days: Store(etcd_store.settings.model_copy(update={"event_retention": days * DAY})) for days in (30, 7)}
    try:
        for days, store in stores.items():  # the longer one publishes first
            lease = event_leases(store).current(store)
            assert days * DAY < store.refresh_lease(lease) <= days * DAY + BUCKET_MAX_SECONDS + 1, days
    finally:
        for store in stores.values():
            store.close()
