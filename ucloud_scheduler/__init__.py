"""ucloud-scheduler. The scheduler: places VMs on hosts, and reschedules the VMs of hosts that died."""
