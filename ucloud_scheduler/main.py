"""Entry point of `ucloud-scheduler`."""

from ucloud_common.cli import daemon_group

cli = daemon_group("ucloud-scheduler", "The scheduler: places VMs on hosts, and reschedules the VMs of hosts that died.")
