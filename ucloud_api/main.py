"""Entry point of `ucloud-api`."""

from ucloud_common.cli import daemon_group

cli = daemon_group("ucloud-api", "The REST API: users' requests about VMs, networks, images and keys, checked and written to etcd.")
