"""Entry point of `ucloud-imagescanner`."""

from __future__ import annotations

import click

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.cli import daemon_group, settings_from
from ucloud_common.joblock import AlreadyRunning, single_run
from ucloud_common.store import Store, StoreUnavailable
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
    store = Store(settings)
    try:
        with single_run(settings.lock_dir, "ucloud-imagescanner"):
            report = scan(store, settings, ceph)
    except AlreadyRunning as exc:
        click.echo(f"ucloud-imagescanner: skipped: {exc}", err=True)
        return
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"ucloud-imagescanner: {report.sentence()}", err=True)
