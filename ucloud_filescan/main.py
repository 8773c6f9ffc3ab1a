"""Entry point of `ucloud-filescan`."""

from __future__ import annotations

from pathlib import Path

import click

from ucloud_common.cli import daemon_group, run_periodic_job, settings_from
from ucloud_filescan.scan import Limits, scan

cli = daemon_group("ucloud-filescan", "File-scan: registers the files users uploaded into their folders.")


@cli.command()
@click.option("--upload-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="One folder per user [default: UCLOUD_UPLOAD_DIR].")
@click.pass_context
def run(ctx: click.Context, upload_dir: Path | None) -> None:
    """Scan once (cron or a systemd timer runs this; a run already going makes this one a no-op).

    Example: ucloud-filescan run --upload-dir /var/www
    """
    settings = settings_from(ctx)
    run_periodic_job("ucloud-filescan", settings, lambda store: scan(
        store, upload_dir or settings.upload_dir, settings.filescan_settle, Limits.of(settings)))
