"""The host agent's metrics (served on UCLOUD_AGENT_METRICS_PORT): its reconciles and starts, its VMs
by status, and each running VM's use of CPU, memory, disks and network as last sampled (labelled by
the VM's uuid: one series per VM on this host, gone when the VM leaves)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ucloud_common.metrics import FAST_BUCKETS
from ucloud_common.vm import VM
from ucloud_common.vmstats import Usage

RECONCILE_SECONDS = Histogram("ucloud_agent_reconcile_seconds", "Seconds one reconcile of one VM took (read, "
                              "observe, decide, record, act).", buckets=FAST_BUCKETS)
RESTARTS = Counter("ucloud_agent_vm_restarts_total", "Starts of a VM whose QEMU had died (a crash, not a start "
                   "the user asked for).")
QEMU_START_SECONDS = Histogram("ucloud_agent_qemu_start_seconds", "Seconds a QEMU took to start and daemonize "
                               "(successful starts).", buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))

_DISK = (("read_bytes", "Bytes the guest read from the drive"), ("written_bytes", "Bytes the guest wrote to the drive"),
         ("reads", "Read requests"), ("writes", "Write requests"))
_NIC = (("received_bytes", "Bytes the guest received"), ("sent_bytes", "Bytes the guest sent"),
        ("received_packets", "Packets the guest received"), ("sent_packets", "Packets the guest sent"))


class AgentCollector(Collector):
    """Figures read at each scrape from the agent's own state: never stale, nothing to keep in step."""

    def __init__(self, vms: Callable[[], list[VM]], usage: Callable[[], Mapping[str, Usage]]) -> None:
        self._vms = vms
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("ucloud_agent_vms", "VMs placed on this host, by status.", labels=["status"])
        for status, count in sorted(Tally(str(vm.status) for vm in self._vms()).items()):
            by_status.add_metric([status], count)
        yield by_status
        usage = self._usage()
        cpu = CounterMetricFamily("ucloud_vm_cpu_seconds", "CPU time of the VM's QEMU since it started.", labels=["vm"])
        rss = GaugeMetricFamily("ucloud_vm_rss_bytes", "Resident memory of the VM's QEMU.", labels=["vm"])
        disks = {name: CounterMetricFamily(f"ucloud_vm_disk_{name}", text, labels=["vm", "drive"]) for name, text in _DISK}
        nics = {name: CounterMetricFamily(f"ucloud_vm_network_{name}", text, labels=["vm", "mac"]) for name, text in _NIC}
        for uuid, used in usage.items():
            cpu.add_metric([uuid], used.cpu_seconds)
            rss.add_metric([uuid], used.rss_bytes)
            for drive, io in used.disks.items():
                for name, family in disks.items():
                    family.add_metric([uuid, drive], getattr(io, name))
            for mac, io in used.nics.items():
                for name, family in nics.items():
                    family.add_metric([uuid, mac], getattr(io, name))
        yield from (cpu, rss, *disks.values(), *nics.values())
