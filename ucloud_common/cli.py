"""The command-line frame every daemon shares: `--config`, and the `config` and `check` commands.

Each daemon adds its own commands (`run`, `serve`, …) to the group this builds, so that options,
error messages and exit codes are the same across all of ucloud's entry points.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import click
from pydantic import ValidationError

from ucloud_common.config import Settings, load_settings
from ucloud_common.joblock import AlreadyRunning, single_run
from ucloud_common.logs import setup_logging
from ucloud_common.metrics import MetricsUnavailable, serve, write_textfile
from ucloud_common.store import Store, StoreError


def settings_from(ctx: click.Context) -> Settings:
    """The validated settings, or exit 2 with one line per problem (never a traceback)."""
    config_file: Path | None = ctx.find_root().params.get("config")
    try:
        settings = load_settings(config_file)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        click.echo(f"Error: invalid configuration: {problems}", err=True)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    return settings


def daemon_group(name: str, description: str) -> click.Group:
    @click.group(name=name, help=description, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Config file of UCLOUD_*=value lines [default: $UCLOUD_CONFIG or /etc/ucloud/ucloud.conf; "
                  "UCLOUD_* environment variables override it].")
    def group(config: Path | None) -> None:
        pass

    @group.command("config")
    @click.pass_context
    def show_config(ctx: click.Context) -> None:
        """Print the effective configuration (environment over file) as UCLOUD_* lines.

        Example: ucloud-scheduler config > /etc/ucloud/ucloud.conf
        """
        settings = settings_from(ctx)
        for field, value in settings.model_dump(mode="json").items():
            if value and type(settings).model_fields[field].repr is False:  # a secret: never printed
                value = "********"
            elif field == "etcd_endpoints":
                value = ",".join(str(ep) for ep in settings.etcd_endpoints)
            elif isinstance(value, list):
                value = ",".join(value)
            # An unset option is shown commented out: `UCLOUD_ETCD_CA_CERT=` would set it to "".
            click.echo(f"# UCLOUD_{field.upper()}=" if value is None else f"UCLOUD_{field.upper()}={value}")

    @group.command()
    @click.pass_context
    def check(ctx: click.Context) -> None:
        """Check the configuration and that etcd answers; exit 1 if it does not.

        Example: ucloud-vm check && echo ready
        """
        settings = settings_from(ctx)
        store = Store(settings)
        try:
            revision = store.revision()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        endpoints = ",".join(str(ep) for ep in settings.etcd_endpoints)
        click.echo(f"{name}: configuration valid; etcd at {endpoints} answers (revision {revision})")

    return group


def serve_metrics(settings: Settings, port: int, setting: str) -> None:
    """Serve this daemon's /metrics on `port` of UCLOUD_METRICS_ADDRESS (0: not at all), or exit
    saying why it cannot (a port taken is a configuration error, told at start, not a silent gap)."""
    try:
        serve(settings.metrics_address, port, setting)
    except MetricsUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def exit_if_failed(daemon: str, failure: str | None) -> None:
    """End a daemon's `run` command: when the daemon stopped because an essential part of it failed
    (`ucloud_common.supervise.Supervisor`), exit 1 with one line saying which and why, so that
    systemd (Restart=always) starts a fresh process. An ordinary stop (SIGTERM) exits 0."""
    if failure:
        raise click.ClickException(f"{daemon} stopped: {failure}; exiting with status 1 so that it is restarted")


class JobReport(Protocol):
    """What one run of a periodic job did."""

    def sentence(self) -> str:
        """One line for the log."""
        ...

    def figures(self) -> dict[str, float]:
        """The counts for the node exporter's textfile (`ucloud_<job>_<figure>`)."""
        ...


def run_periodic_job(name: str, settings: Settings, work: Callable[[Store], JobReport]) -> None:
    """One run of a periodic job (ucloud-filescan, ucloud-imagescanner): under its lock, so that a run
    started while the last one still goes is a logged no-op; `work` returns its report, which is told
    and, with UCLOUD_METRICS_TEXTFILE_DIR, written for the node exporter (after a complete run only:
    a job that keeps failing shows as a last run time that grows old)."""
    store = Store(settings)
    try:
        with single_run(settings.lock_dir, name):
            report = work(store)
    except AlreadyRunning as exc:
        click.echo(f"{name}: skipped: {exc}", err=True)
        return
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"{name}: {report.sentence()}", err=True)
    try:
        write_textfile(settings.metrics_textfile_dir, name.removeprefix("ucloud-"), report.figures())
    except OSError as exc:
        raise click.ClickException(f"{name}: its run is done, but its figures could not be written to "
                                   f"{settings.metrics_textfile_dir} (UCLOUD_METRICS_TEXTFILE_DIR): {exc}") from None
