"""Entry point of `ucloud-vm`: the host agent, and importing images into this host's store."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import ssl
import threading
import uuid as uuidlib
from pathlib import Path

import click
from prometheus_client import REGISTRY

from ucloud_common.ceph import Ceph, CephError
from ucloud_common.cli import daemon_group, exit_if_failed, serve_metrics, settings_from
from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_common.image import Image, ImageStatus
from ucloud_common.record import check_name
from ucloud_common.specs import Specs
from ucloud_common.store import KeptLease, Store, StoreUnavailable
from ucloud_vm.accel import choose
from ucloud_vm.agent import Agent, HostSpec, machine_capacity
from ucloud_vm.console import ConsoleProxyServer, proxy_url, register, serve_consoles
from ucloud_vm.images import import_image
from ucloud_vm.imageserver import ImageServer
from ucloud_vm.peerimages import PeerImages
from ucloud_common.network import NETWORKS
from ucloud_vm.hostnet import HostNetwork, Underlay, UnderlayError
from ucloud_vm.qemu import GuacamoleVNC, QemuDriver
from ucloud_vm.radvd import Radvd
from ucloud_vm.vmnet import VMNetworks
from ucloud_vm.storage import LocalStorage, RBDStorage, StorageBackend

cli = daemon_group("ucloud-vm", "The host agent: runs this host's VMs in QEMU and reports what is true of them.")


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option("--hostname", required=True, callback=_name, help="This host's name in ucloud.")
@click.option("--address", default=None, help="This host's address [default: its hostname's address].")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runtime files of this host's VMs [default: UCLOUD_RUN_DIR/HOSTNAME].")
@click.option("--cpu", type=click.IntRange(1), default=None, help="CPUs to offer [default: this machine's].")
@click.option("--ram", type=click.FloatRange(min=0.1), default=None, help="GiB of RAM to offer [default: this machine's].")
@click.option("--ssd", type=click.IntRange(1), default=None, help="GiB of disk to offer [default: the disk dir's size].")
@click.option("--hdd", type=click.IntRange(0), default=None, help="GiB of HDD disks to offer [default: the size of "
              "UCLOUD_HDD_DIR's file system; 0 without it]. A host with only an HDD pool (UCLOUD_CEPH_HDD_POOL) "
              "offers what this says.")
@click.option("--image-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="This host's local image store [default: UCLOUD_IMAGE_DIR].")
@click.pass_context
def run(ctx: click.Context, hostname: str, address: str | None, run_dir: Path | None, cpu: int | None,
        ram: float | None, ssd: int | None, hdd: int | None, image_dir: Path | None) -> None:
    """Run the agent for one host until SIGTERM or SIGINT (its VMs keep running).

    Several agents with different --hostname and --run-dir may run on one machine, as simulated hosts.

    Example: ucloud-vm run --hostname h1
    """
    # One socket held per QEMU (its events), beside QMP sessions and etcd's: 1024 would not do for hundreds.
    _all_descriptors()
    settings = settings_from(ctx)
    machine = machine_capacity(settings.disk_dir, settings.hdd_dir)
    capacity = Specs(cpu=cpu or machine.cpu, ram=ram or machine.ram, ssd=ssd or machine.ssd,
                     hdd=machine.hdd if hdd is None else hdd)
    # Other hosts reach this one at its address, also for VXLAN: the underlay address when one is set.
    host = HostSpec(hostname, address or settings.underlay_address or _address(), capacity)
    image_dir = image_dir or settings.image_dir
    backends: dict[str, StorageBackend] = {"local": LocalStorage(image_dir, settings.disk_dir, settings.hdd_dir)}
    if settings.ceph_conf:
        try:
            ceph = Ceph(settings.ceph_conf, settings.ceph_client)
        except CephError as exc:
            raise click.ClickException(str(exc)) from None
        backends["rbd"] = RBDStorage(ceph, settings.ceph_image_pool, settings.ceph_vm_pool, settings.ceph_hdd_pool)
    if capacity.hdd and not any(backend.offers_hdd for backend in backends.values()):
        raise click.ClickException(f"--hdd {capacity.hdd} offers HDD, but no storage here can make HDD disks: "
                                   "set UCLOUD_HDD_DIR (local) or UCLOUD_CEPH_HDD_POOL (rbd)")
    accel = choose(settings.accel, settings.probe_image_dir)
    store = Store(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_dir = run_dir or settings.run_dir / hostname
    guacamole = GuacamoleVNC(settings.guacamole_vnc_address, settings.guacamole_vnc_ports) \
        if settings.guacamole_vnc_address else None
    driver = QemuDriver(run_dir, accel, settings.qmp_timeout, guacamole=guacamole)
    networks = None
    if settings.underlay_device or settings.underlay_address:
        routed = (lambda: {n.value.vxlan_id for n in store.list(NETWORKS).items.values()}) if settings.router \
            else frozenset
        devices, underlay = HostNetwork(router_of=routed), Underlay.from_settings(settings)
        try:  # a wrong underlay is a configuration error: said now, not as every VM's NIC error
            logging.getLogger(__name__).info("VM networks on host %s over %s", hostname, devices.check(underlay))
        except UnderlayError as exc:
            raise click.ClickException(str(exc)) from None
        networks = VMNetworks(store, hostname, devices, underlay, Radvd(run_dir / "radvd"), router=settings.router)
    else:
        logging.getLogger(__name__).warning("no underlay configured (UCLOUD_UNDERLAY_DEVICE, UCLOUD_UNDERLAY_ADDRESS): "
                                            "VM networks are records only on host %s, its QEMUs get no NIC", hostname)
    server = None
    if settings.image_secret:
        try:
            server = ImageServer(image_dir, settings.image_secret, host.address, settings.image_port,
                                 settings.image_fetch_timeout)
        except OSError as exc:
            raise click.ClickException(f"cannot serve images at {host.address} port {settings.image_port} "
                                       f"(UCLOUD_IMAGE_PORT): {exc}") from None
        server.start()
    else:
        logging.getLogger(__name__).warning("no UCLOUD_IMAGE_SECRET: host %s neither serves nor fetches images; "
                                            "local-disk VMs are placed here only with their image here", hostname)
    images = PeerImages(store, image_dir, hostname, settings.image_secret, server.url if server else "",
                        settings.image_fetch_timeout)
    agent = Agent(store, settings, host, driver, backends, networks, images)
    REGISTRY.register(agent.collector)
    serve_metrics(settings, settings.agent_metrics_port, "UCLOUD_AGENT_METRICS_PORT")
    try:
        agent.run(stop)
    finally:
        if server is not None:
            server.close()
        driver.close()
        store.close()
    exit_if_failed(f"ucloud-vm {hostname}", agent.failure)


def _all_descriptors() -> None:
    """Raise the soft limit of open files to the hard one (systemd's soft default is 1024)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


@cli.command("console-proxy")
@click.option("--hostname", required=True, callback=_name, help="This host's name in ucloud.")
@click.option("--address", default=None, help="The address users' browsers reach this host at [default: the "
              "underlay address, else its hostname's address].")
@click.option("--bind", default="::", show_default=True, help="The address to listen on.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runtime files of this host's VMs, as the agent's --run-dir [default: UCLOUD_RUN_DIR/HOSTNAME].")
@click.pass_context
def console_proxy(ctx: click.Context, hostname: str, address: str | None, bind: str, run_dir: Path | None) -> None:
    """Serve this host's VM consoles over websockets (UCLOUD_CONSOLE_PORT; wss with UCLOUD_CONSOLE_CERT
    and UCLOUD_CONSOLE_KEY) to whoever holds a one-time ticket from the API, until SIGTERM or SIGINT.

    Example: ucloud-vm console-proxy --hostname h1
    """
    # Two descriptors per console: systemd's soft limit of 1024 would refuse the 507th (tests.bench.console).
    _all_descriptors()
    settings = settings_from(ctx)
    tls = None
    if settings.console_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(settings.console_cert, settings.console_key)
        except (OSError, ssl.SSLError) as exc:
            raise click.ClickException(f"UCLOUD_CONSOLE_CERT / UCLOUD_CONSOLE_KEY: {exc}") from None
    url = proxy_url(address or settings.underlay_address or _address(), settings.console_port, tls is not None)
    store = Store(settings)
    lease = KeptLease(store, settings.host_lease_ttl, settings.heartbeat_interval)
    try:
        register(store, hostname, url, lease.id)
        proxy = ConsoleProxyServer(store, hostname, run_dir or settings.run_dir / hostname)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            lease_lost = asyncio.create_task(asyncio.to_thread(lease.lost.wait))
            lease_lost.add_done_callback(lambda _: stop.set())
            await serve_consoles(proxy, bind, settings.console_port, tls, stop)
            lease_lost.cancel()

        logging.getLogger(__name__).info("console proxy of host %s at %s", hostname, url)
        asyncio.run(main())
    finally:
        lease.close()
        store.close()
    if lease.lost.is_set():
        exit_if_failed(f"ucloud-vm console-proxy {hostname}", "its lease in etcd was lost")


@cli.command("import-image")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, callback=_name, help="The image's name.")
@click.option("--uuid", "uuid_", default=None, help="The image's id [default: random].")
@click.option("--owner", default="admin", show_default=True, callback=_name, help="The user who owns it.")
@click.option("--private", is_flag=True, help="Visible to its owner only (default: public).")
@click.option("--store", "store_name", default="local", show_default=True,
              help="local (this host's image directory) or the Ceph image pool (UCLOUD_CEPH_IMAGE_POOL).")
@click.pass_context
def import_(ctx: click.Context, path: Path, name: str, uuid_: str | None, owner: str, private: bool,
            store_name: str) -> None:
    """Import a raw or qcow2 file into an image store, as a CREATED image (replacing an image of the
    same id), with image-scanner's checks: the format is judged from the header, no backing or data
    file, qemu-img runs under limits, the virtual size is at most UCLOUD_IMAGE_MAX_SIZE GiB. A refused
    file leaves the image ERROR with the reason; prints the image's id.

    Example: ucloud-vm import-image /var/lib/ucloud/tiny/tiny.qcow2 --name tiny --uuid tiny
    """
    settings = settings_from(ctx)
    ceph = None
    try:
        request = Image(uuid=check_name(uuid_) if uuid_ else str(uuidlib.uuid4()), owner=owner, name=name,
                        store_name=store_name, public=not private)
        if store_name == settings.ceph_image_pool and settings.ceph_conf:
            ceph = Ceph(settings.ceph_conf, settings.ceph_client)
        store = Store(settings)
        try:
            outcome = import_image(store, settings, path, request, ceph)
        finally:
            store.close()
    except (ValueError, CephError, PermanentError, TemporaryError, StoreUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if outcome.status is ImageStatus.TO_BE_CREATED:
        raise click.ClickException(f"image {request.uuid} not imported, a temporary failure: {outcome.reason}; "
                                   "run this again")
    if outcome.status is ImageStatus.ERROR:
        raise click.ClickException(f"image {request.uuid} refused (it is ERROR): {outcome.reason}")
    click.echo(request.uuid)


def _address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
