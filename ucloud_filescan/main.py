"""Entry point of `ucloud-filescan`."""

from ucloud_common.cli import daemon_group

cli = daemon_group("ucloud-filescan", "File-scan: registers the files users uploaded into their folders.")
