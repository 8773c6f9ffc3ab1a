"""The scheduler's metrics (served on UCLOUD_SCHEDULER_METRICS_PORT). Only the leader runs cycles:
a standby's figures stand still, and `ucloud_scheduler_leader` says which process to read."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

from ucloud_common.metrics import FAST_BUCKETS
from ucloud_scheduler.plan import Plan

LEADER = Gauge("ucloud_scheduler_leader", "1 while this scheduler is the elected leader, else 0.")
PLACEMENTS = Counter("ucloud_scheduler_placements_total", "VMs placed on a host (written to etcd).")
KILLED = Counter("ucloud_scheduler_vms_killed_total", "VMs recorded KILLED because their host died.")
HOSTS_DOWN = Counter("ucloud_scheduler_hosts_down_total", "Hosts declared DOWN because their lease expired.")
CYCLE_SECONDS = Histogram("ucloud_scheduler_cycle_seconds", "Seconds one cycle took: deciding on the view and "
                          "writing the decisions.", buckets=FAST_BUCKETS)
PENDING = Gauge("ucloud_scheduler_pending_vms", "VMs waiting for a host at the start of the last cycle.")
UNPLACEABLE = Gauge("ucloud_scheduler_unplaceable_vms", "VMs no host could take in the last cycle, by kind of "
                    "reason (no_room_cpu, no_room_ram, no_room_ssd, no_room_hdd, no_room, storage, image, anti_affinity, "
                    "no_host_up, no_host).", ["reason"])


def planned(plan: Plan) -> None:
    """Take in what a cycle decided (the placements are counted as written, in `Scheduler.apply`)."""
    KILLED.inc(len(plan.killed))
    HOSTS_DOWN.inc(len(plan.down))
    UNPLACEABLE.clear()  # a reason that no longer holds for any VM leaves the answer
    for reason, count in Tally(getattr(write.changes.get("error"), "kind", "other") for write in plan.refused).items():
        UNPLACEABLE.labels(reason).set(count)
