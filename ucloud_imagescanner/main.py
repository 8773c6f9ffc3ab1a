"""Entry point of `ucloud-imagescanner`."""

from __future__ import annotations

import click

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.cli import daemon_group, run_periodic_job, settings_from
from ucloud_imagescanner.scanner import scan

cli = daemon_group("ucloud-imagescanner", "Image-scanner: turns requested files into VM images, safely.")


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Create every requested image once (cron or a systemd timer runs this; a run already going
    makes this one a no-op).

    Example: ucloud-imagescanner run
    """
    settings = settings_from(ctx)
    try:
        ceph = Ceph(settings.ceph_conf, settings.ceph_client) if settings.ceph_conf else None
    except CephError as exc:
        raise click.ClickException(str(exc)) from None
    run_periodic_job("ucloud-imagescanner", settings, lambda store: scan(store, settings, ceph))
