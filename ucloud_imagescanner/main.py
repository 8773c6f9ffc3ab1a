"""Entry point of `ucloud-imagescanner`."""

from ucloud_common.cli import daemon_group

cli = daemon_group("ucloud-imagescanner", "Image-scanner: turns requested files into VM images, safely.")
