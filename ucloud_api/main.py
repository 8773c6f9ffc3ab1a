"""Entry point of `ucloud-api`: serve the API under gunicorn, create the first admin."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ucloud_api.auth import create_user
from ucloud_api.errors import APIError
from ucloud_common.cli import daemon_group, settings_from
from ucloud_common.config import Settings
from ucloud_common.event import forget_old_events
from ucloud_common.store import Store, StoreError
from ucloud_common.user import Role

log = logging.getLogger(__name__)

cli = daemon_group("ucloud-api", "The REST API: users' requests about VMs, networks, images and keys, "
                   "checked and written to etcd.")

GUNICORN_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "gunicorn.conf.py"


@cli.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True,
              help="HOST:PORT to listen on ([::]:8080: every address, IPv6 and IPv4, as the systemd unit does).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes [default: from the gunicorn config: one per CPU, 16 threads each].")
@click.option("--gunicorn-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=GUNICORN_CONFIG, show_default=True, help="gunicorn settings (timeouts, limits, logging).")
@click.pass_context
def serve(ctx: click.Context, bind: str, workers: int | None, gunicorn_config: Path) -> None:
    """Serve the API under gunicorn (replaces this process).

    Example: ucloud-api serve --bind 127.0.0.1:8080
    """
    settings = settings_from(ctx)  # refuse to start on a bad configuration, before forking workers
    _forget_old_events(settings)
    config = ctx.find_root().params.get("config")
    if config:
        os.environ["UCLOUD_CONFIG"] = str(config)
    argv = [sys.executable, "-m", "gunicorn", "--config", str(gunicorn_config), "--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    os.execv(sys.executable, [*argv, "ucloud_api.wsgi:app"])


def _forget_old_events(settings: Settings) -> None:
    """An upgrade's one step: events of the old layout go (see `forget_old_events`). Best effort: an
    API started while etcd is away serves anyway (answering 503), and the next start deletes them."""
    store = Store(settings)
    try:
        forgotten = forget_old_events(store)
    except StoreError as exc:
        log.warning("events of the layout before the audit trail are left for the next start: %s", exc)
        return
    finally:
        store.close()
    if forgotten:
        log.info("deleted %d events of the layout before the audit trail (a VM's, kept without a lease)", forgotten)


@cli.command("create-admin")
@click.argument("name")
@click.pass_context
def create_admin(ctx: click.Context, name: str) -> None:
    """Create an admin user and print its token (only the token) on stdout.

    Example: TOKEN=$(ucloud-api create-admin alice)
    """
    store = Store(settings_from(ctx))
    try:
        _, token = create_user(store, name, Role.ADMIN)
    except APIError as exc:
        raise click.ClickException(exc.message) from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(f"invalid name {name!r}: {exc}") from None
    finally:
        store.close()
    click.echo(token)
