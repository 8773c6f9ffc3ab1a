"""Entry point of `ucloud-vm`."""

from ucloud_common.cli import daemon_group

cli = daemon_group("ucloud-vm", "The host agent: runs this host's VMs in QEMU and reports what is true of them.")
