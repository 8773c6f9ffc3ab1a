"""Entry point of `ucloud-scheduler`."""

from __future__ import annotations

import signal
import threading

import click

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.cli import daemon_group, exit_if_failed, serve_metrics, settings_from
from ucloud_common.store import Store
from ucloud_scheduler.fencing import AllFences, CommandFence, Fence, NoFence, RBDFence
from ucloud_scheduler.scheduler import Scheduler

cli = daemon_group("ucloud-scheduler", "The scheduler: places VMs on hosts, and reschedules the VMs of hosts "
                   "that died.")


@cli.command()
@click.option("--name", default=None, help="This instance's name in the leader election [default: random].")
@click.pass_context
def run(ctx: click.Context, name: str | None) -> None:
    """Run the scheduler until SIGTERM or SIGINT. Start several: one leads, the others stand by.

    Example: ucloud-scheduler run --name sched-a
    """
    settings = settings_from(ctx)
    fences: list[Fence] = []
    if settings.fence_command:
        fences.append(CommandFence(settings.fence_command, settings.fence_timeout))
    if settings.ceph_conf:
        try:
            fences.append(RBDFence(Ceph(settings.ceph_conf, settings.ceph_client), settings.ceph_vm_pool,
                                   hdd_pool=settings.ceph_hdd_pool))
        except CephError as exc:
            raise click.ClickException(str(exc)) from None
    fence: Fence = AllFences(fences) if fences else NoFence()
    serve_metrics(settings, settings.scheduler_metrics_port, "UCLOUD_SCHEDULER_METRICS_PORT")
    store = Store(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    scheduler = Scheduler(store, settings, fence, name)
    click.echo(f"ucloud-scheduler {scheduler.candidate} starting", err=True)
    try:
        scheduler.run(stop)
    finally:
        store.close()
    exit_if_failed(f"ucloud-scheduler {scheduler.candidate}", scheduler.failure)
