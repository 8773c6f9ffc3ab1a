"""The QEMU driver: the command line (built here and nowhere else), the process, and QMP.

Each VM is one QEMU process that daemonizes (`-daemonize`, `-pidfile`), so it outlives the agent:
a restarted agent finds it again by its pid file and QMP socket. `-no-shutdown` keeps QEMU alive
when the guest powers off, so the agent can tell a guest's own power-off (QEMU still there, status
"shutdown") from a crash (QEMU gone).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecuteError, QMPClient, QMPError

from ucloud_common.specs import guest_ram_mib
from ucloud_common.vm import VM, VNCEndpoint
from ucloud_common.vmstats import DiskIO, Usage
from ucloud_vm import procstats
from ucloud_vm.cidata import build_seed, drive_options
from ucloud_vm.driver import DriverError, DriverTimeout, MigrationInfo, Observation, RunState
from ucloud_vm.paths import VMPaths
from ucloud_vm.qmp_events import EventFollower

log = logging.getLogger(__name__)

T = TypeVar("T")
QMP_TIMEOUT_S = 5.0
# QEMU's run states (query-status) as the driver reports them; any other is a guest that is not
# running but keeps its memory (debug, watchdog, the transient save/restore states).
_STATES = {
    "running": RunState.RUNNING,
    "shutdown": RunState.SHUTDOWN,
    "guest-panicked": RunState.GUEST_PANICKED,
    "internal-error": RunState.INTERNAL_ERROR,
    "io-error": RunState.IO_ERROR,
    "inmigrate": RunState.INMIGRATE,
    "postmigrate": RunState.POSTMIGRATE,
}


# The id of the second VNC server (TCP, for Guacamole) on QEMU's command line and in query-vnc-servers.
GUACAMOLE_VNC_ID = "guacamole"
# What QEMU 7.2 says when every port from a VNC display to its `to=` is taken.
_NO_FREE_PORT = "Failed to find an available port"
# VNC authentication (RFB's DES challenge) reads 8 characters of a password and no more.
VNC_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class GuacamoleVNC:
    """Where this host's QEMUs offer VNC on TCP for guacd: `address`, on the first free of `ports`
    ports from 5900 (UCLOUD_GUACAMOLE_VNC_ADDRESS, UCLOUD_GUACAMOLE_VNC_PORTS)."""

    address: str
    ports: int

    def vnc_option(self, password_secret: str) -> str:
        host = f"[{self.address}]" if ipaddress.ip_address(self.address).version == 6 else self.address
        # display 0 = port 5900; `to=` lets QEMU take the next free display (bind, not a guess:
        # two QEMUs starting at once never get the same port).
        return (f"{host}:0,to={self.ports - 1},id={GUACAMOLE_VNC_ID},password-secret={password_secret}")


class QEMUError(Exception):
    """QEMU could not be started or did not answer; `str()` says why."""


class QEMUStartError(QEMUError, DriverError):
    """QEMU did not start (its own words, for the VM's `error`)."""


class QMPFailed(QEMUError, DriverTimeout):
    """QEMU did not greet or answer in time, or at all."""


def machine_args(accel: str, cpus: int, ram_mib: int) -> list[str]:
    """The machine itself, for VMs and for the KVM probe alike: no default devices, no display."""
    argv = ["-nodefaults", "-no-user-config", "-display", "none",
            "-accel", accel, "-smp", str(cpus), "-m", str(ram_mib)]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    return argv


def command_line(vm: VM, disk: list[str], paths: VMPaths, accel: str, binary: str = "qemu-system-x86_64",
                 paused: bool = False, seed: list[str] | None = None,
                 nics: Mapping[str, str] | None = None, guacamole: GuacamoleVNC | None = None,
                 incoming: bool = False, hdd: list[str] | None = None) -> list[str]:
    """The whole QEMU command line for `vm`; `disk` is the drive's `-drive` options (with format=),
    `hdd` the HDD disk's, right after it (the guest's /dev/vdb: a data disk's name should not move
    with the seed drive);
    `paused`: the CPUs stay stopped until QMP `cont` (-S); `seed`: the cloud-init drive's options,
    after the disk so that the disk stays the guest's first (/dev/vda); `nics`: MAC → the tap each
    virtio NIC is on (ids from the MAC, so that what runs can be compared with the record);
    `guacamole`: a second VNC server, on TCP with the password in `paths.vnc_password`."""
    argv = [
        binary, "-name", f"guest={vm.uuid},process=ucloud-{vm.uuid[:8]}",
        *machine_args(accel, vm.specs.cpu, guest_ram_mib(vm.specs.ram)), "-no-shutdown",
        "-daemonize", "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{paths.qmp},server=on,wait=off", "-qmp", f"unix:{paths.qmp_events},server=on,wait=off",
        "-chardev", f"socket,id=serial0,path={paths.serial_socket},server=on,wait=off,logfile={paths.serial},"
                    "logappend=on", "-serial", "chardev:serial0",
        "-vnc", f"unix:{paths.vnc}", "-device", "VGA",
        # A guest kernel that panics tells QEMU through pvpanic; QEMU then pauses in the run state
        # "guest-panicked", which the agent reports and handles as a crash, rather than leaving a
        # dead guest spinning at 100% CPU while its VM shows RUNNING.
        "-device", "pvpanic", "-action", "panic=pause",
        "-drive", ",".join([*disk, "if=virtio", "id=disk0"]),
    ]
    if hdd is not None:
        argv += ["-drive", ",".join([*hdd, "if=virtio", "id=disk1"])]
    if guacamole is not None:
        # The password from a file (root's), not the command line, which every local user can read
        # in /proc; the unix socket above stays without one (only root and the console proxy reach it).
        argv += ["-object", f"secret,id=vncpass,file={paths.vnc_password}", "-vnc", guacamole.vnc_option("vncpass")]
    if seed is not None:
        argv += ["-drive", ",".join(seed)]
    slots = {nic.mac: nic.slot for nic in vm.networks}
    for mac, tap in (nics or {}).items():
        name = _nic_name(mac)
        argv += ["-netdev", f"tap,id=net{name},ifname={tap},script=no,downscript=no",
                 "-device", ",".join([f"virtio-net-pci,netdev=net{name},mac={mac},id=nic{name}",
                                      *_slot_option(slots.get(mac))])]
    if paused:
        argv.append("-S")
    if incoming:  # the guest arrives by live migration; where from is said over QMP (migrate-incoming)
        argv += ["-incoming", "defer"]
    return argv


def start(argv: list[str], paths: VMPaths) -> int:
    """Start QEMU; return its pid once it has daemonized. Raises QEMUError with QEMU's own words."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.pidfile.unlink(missing_ok=True)
    with open(paths.qemu_log, "ab") as stderr:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                timeout=60, start_new_session=True)
        stderr.write(result.stderr)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise QEMUStartError(f"QEMU failed to start: {message[-1] if message else f'exit {result.returncode}'}")
    pid = read_pid(paths)
    if pid is None:
        raise QEMUStartError("QEMU started but wrote no pid file")
    return pid


def read_pid(paths: VMPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Whether the process runs (a zombie does not: nobody may reap an orphaned QEMU here)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def running_qemu(paths: VMPaths) -> int | None:
    """The pid of this VM's QEMU if it runs (and is QEMU, not a recycled pid), else None."""
    pid = read_pid(paths)
    if not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    return pid if str(paths.pidfile).encode() in cmdline else None


def session(paths: VMPaths, what: str, work: Callable[[QMPClient], Awaitable[T]],
            timeout: float = QMP_TIMEOUT_S) -> T:
    """Run `work` on a fresh QMP connection; QMPFailed if QEMU does not answer each step in `timeout`.

    Connecting is bounded too (the sync wrapper's `connect` waits for the greeting for ever): a QEMU
    whose main loop is stuck — e.g. in a disk request to a Ceph that has blocklisted it — accepts
    the connection but never greets, and must cost a worker seconds, not its life."""

    async def run() -> T:
        client = QMPClient(f"ucloud-{paths.root.name[:8]}")
        await asyncio.wait_for(client.connect(str(paths.qmp)), timeout)
        try:
            return await work(client)
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout)
            except (OSError, QMPError, EOFError, asyncio.TimeoutError):
                pass  # after `quit` the socket is already gone

    try:
        return asyncio.run(run())
    except asyncio.TimeoutError:
        raise QMPFailed(f"QMP {what} at {paths.qmp}: no answer within {timeout:.0f} s", timeout) from None
    except (OSError, QMPError, EOFError) as exc:
        raise QMPFailed(f"QMP {what} at {paths.qmp} failed: {exc or type(exc).__name__}", timeout) from None


def execute(paths: VMPaths, command: str, timeout: float = QMP_TIMEOUT_S, **arguments: Any) -> Any:
    """Run one QMP command on a fresh connection (see `session`)."""
    return session(paths, command, lambda client: asyncio.wait_for(client.execute(command, arguments or None),
                                                                    timeout), timeout)


def write_vnc_password(paths: VMPaths) -> None:
    """A fresh random VNC password for the QEMU about to start (48 bits: all 8 characters VNC reads)."""
    paths.vnc_password.unlink(missing_ok=True)
    fd = os.open(paths.vnc_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(6))


def guacamole_endpoint(servers: list[dict[str, Any]], paths: VMPaths) -> VNCEndpoint | None:
    """The TCP VNC server for Guacamole among QEMU's `query-vnc-servers`, with the password it was
    started with (None: it has none)."""
    for server in servers:
        if server.get("id") != GUACAMOLE_VNC_ID or not server.get("server"):
            continue
        try:
            password = paths.vnc_password.read_text()
        except FileNotFoundError:
            return None
        listening = server["server"][0]
        return VNCEndpoint(address=listening["host"], port=int(listening["service"]), password=password)
    return None


def _nic_name(mac: str) -> str:
    """The NIC's part of its QEMU ids (`nic…`, `net…`): its MAC's digits, so that the NICs a QEMU
    has can be compared with the record's."""
    return mac.replace(":", "").lower()


def _slot_option(slot: int | None) -> list[str]:
    """The NIC's PCI address, where the record keeps one (`NIC.slot`)."""
    return [] if slot is None else [f"addr={slot:#x}"]


def _is_nic(device: str) -> bool:
    return device.startswith("nic") and len(device) == 15


def _mac_of(device: str) -> str:
    digits = device.removeprefix("nic")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def status(paths: VMPaths, timeout: float = QMP_TIMEOUT_S) -> str:
    """QEMU's run state: "running", "paused", "shutdown" (the guest powered off), …"""
    return str(execute(paths, "query-status", timeout)["status"])


def kill(paths: VMPaths, timeout: float = QMP_TIMEOUT_S) -> None:
    """Stop QEMU now: `quit` over QMP, SIGKILL if it does not answer."""
    pid = running_qemu(paths)
    if pid is None:
        return
    try:
        execute(paths, "quit", timeout)
    except QEMUError:
        pass
    for _ in range(50):
        if not alive(pid):
            return
        time.sleep(0.05)
    log.warning("QEMU pid %d ignored quit; killing it", pid)
    os.kill(pid, 9)


def last_words(paths: VMPaths) -> str:
    """The last line QEMU wrote to its log, if any."""
    try:
        lines = paths.qemu_log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


class QemuDriver:
    """The `Hypervisor` of real hosts: one daemonized QEMU per VM under `run_dir/vms/<uuid>/`,
    found again by its pid file and QMP socket after an agent restart."""

    def __init__(self, run_dir: Path, accel: str, qmp_timeout: float = QMP_TIMEOUT_S,
                 netns: str | None = None, guacamole: GuacamoleVNC | None = None) -> None:
        """`netns`: the network namespace QEMUs start in (their taps live there); None: this one.
        `guacamole`: where QEMUs started from now on also offer VNC on TCP; None: they do not."""
        self.accel = accel
        self._guacamole = guacamole
        self._run_dir = run_dir
        self._timeout = qmp_timeout
        self._netns = netns
        self._events = EventFollower(qmp_timeout)

    def _paths(self, uuid: str) -> VMPaths:
        return VMPaths.of(self._run_dir, uuid)

    def follow(self, uuid: str, wake: Callable[[str], None]) -> bool:
        paths = self._paths(uuid)
        if not paths.qmp_events.exists():
            return False  # gone, or started before QEMUs had an events monitor
        return self._events.follow(uuid, paths.qmp_events, wake)

    def close(self) -> None:
        self._events.close()

    def observe(self, uuid: str) -> Observation:
        paths = self._paths(uuid)
        if running_qemu(paths) is None:
            return Observation(RunState.ABSENT, last_words(paths))
        async def look(client: QMPClient) -> tuple[str, frozenset[str], VNCEndpoint | None]:
            state = await asyncio.wait_for(client.execute("query-status"), self._timeout)
            devices = await asyncio.wait_for(client.execute("qom-list", {"path": "/machine/peripheral"}),
                                             self._timeout)
            # Asked of every QEMU, whatever this agent's setting: what it reports is what runs (one
            # started before the setting changed keeps its server, or has none).
            servers = await asyncio.wait_for(client.execute("query-vnc-servers"), self._timeout)
            return (str(state["status"]), frozenset(_mac_of(d["name"]) for d in devices if _is_nic(d["name"])),
                    guacamole_endpoint(servers, paths))

        try:
            state, nics, vnc = session(paths, "query-status", look, self._timeout)
        except QEMUError as exc:
            # Gone between the two looks, or alive and silent: tell them apart by the process.
            if running_qemu(paths) is None:
                return Observation(RunState.ABSENT, last_words(paths))
            return Observation(RunState.UNRESPONSIVE, str(exc))
        return Observation(_STATES.get(state, RunState.PAUSED), state, nics, vnc)

    def usage(self, uuid: str) -> Usage | None:
        paths = self._paths(uuid)
        pid = running_qemu(paths)
        if pid is None:
            return None

        async def ask(client: QMPClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            blockstats = await asyncio.wait_for(client.execute("query-blockstats"), self._timeout)
            devices = await asyncio.wait_for(client.execute("qom-list", {"path": "/machine/peripheral"}),
                                             self._timeout)
            return blockstats, devices

        blockstats, devices = session(paths, "query-blockstats", ask, self._timeout)
        disks = {entry["device"]: DiskIO(read_bytes=entry["stats"]["rd_bytes"], written_bytes=entry["stats"]["wr_bytes"],
                                         reads=entry["stats"]["rd_operations"], writes=entry["stats"]["wr_operations"])
                 for entry in blockstats if entry.get("device")}
        try:
            return Usage(cpu_seconds=procstats.cpu_seconds(pid), rss_bytes=procstats.rss_bytes(pid), disks=disks,
                         nics=procstats.nic_io(pid, (_mac_of(d["name"]) for d in devices if _is_nic(d["name"]))))
        except (FileNotFoundError, ProcessLookupError):
            return None  # it ended meanwhile

    def plug(self, vm: VM, mac: str, tap: str) -> None:
        name = _nic_name(mac)
        slot = next((nic.slot for nic in vm.networks if nic.mac == mac), None)

        async def add(client: QMPClient) -> None:
            try:  # a netdev left by an unplug whose guest let the device go after we stopped waiting
                await asyncio.wait_for(client.execute("netdev_del", {"id": f"net{name}"}), self._timeout)
            except QMPError:
                pass
            try:
                await asyncio.wait_for(client.execute("netdev_add", {
                    "type": "tap", "id": f"net{name}", "ifname": tap, "script": "no", "downscript": "no"}), self._timeout)
                await asyncio.wait_for(client.execute("device_add", {
                    "driver": "virtio-net-pci", "id": f"nic{name}", "netdev": f"net{name}", "mac": mac,
                    **({} if slot is None else {"addr": f"{slot:#x}"})}), self._timeout)
            except ExecuteError as exc:  # QEMU said no (e.g. the tap is busy): asking again will not help
                raise DriverError(f"QEMU refused the NIC: {exc}") from None

        session(self._paths(vm.uuid), "device_add", add, self._timeout)

    def unplug(self, uuid: str, mac: str) -> None:
        name = _nic_name(mac)

        async def remove(client: QMPClient) -> None:
            with client.listener("DEVICE_DELETED") as deleted:
                await asyncio.wait_for(client.execute("device_del", {"id": f"nic{name}"}), self._timeout)
                # The guest acknowledges the ACPI eject; only then is the device gone.
                async def gone() -> None:
                    async for event in deleted:
                        if event.get("data", {}).get("device") == f"nic{name}":
                            return
                await asyncio.wait_for(gone(), 3 * self._timeout)
            await asyncio.wait_for(client.execute("netdev_del", {"id": f"net{name}"}), self._timeout)

        session(self._paths(uuid), "device_del", remove, self._timeout)

    def start(self, vm: VM, disk: list[str], *, paused: bool, seed: Mapping[str, bytes],
              nics: Mapping[str, str], hdd: list[str] | None = None) -> None:
        self._launch(vm, disk, paused=paused, seed=seed, nics=nics, incoming=False, hdd=hdd)

    def receive(self, vm: VM, disk: list[str], *, seed: Mapping[str, bytes], nics: Mapping[str, str],
                address: str, hdd: list[str] | None = None) -> str:
        self._launch(vm, disk, paused=False, seed=seed, nics=nics, incoming=True, hdd=hdd)
        paths = self._paths(vm.uuid)
        host = f"[{address}]" if ":" in address else address

        async def listen(client: QMPClient) -> str:
            await asyncio.wait_for(client.execute("migrate-incoming", {"uri": f"tcp:{host}:0"}), self._timeout)
            # Port 0: QEMU binds a free one and says which.
            info = await asyncio.wait_for(client.execute("query-migrate"), self._timeout)
            return f"{host}:{info['socket-address'][0]['port']}"

        try:
            return session(paths, "migrate-incoming", listen, self._timeout)
        except (QEMUError, ExecuteError, KeyError, IndexError) as exc:
            kill(paths, self._timeout)
            raise DriverError(f"QEMU could not listen for the migration: {exc}") from None

    def send(self, uuid: str, to: str, downtime_ms: int, bandwidth_mib: int) -> None:
        async def migrate(client: QMPClient) -> None:
            await asyncio.wait_for(client.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]}), self._timeout)
            await asyncio.wait_for(client.execute("migrate-set-parameters", {
                "downtime-limit": downtime_ms, "max-bandwidth": bandwidth_mib * 1024 * 1024}), self._timeout)
            await asyncio.wait_for(client.execute("migrate", {"uri": f"tcp:{to}"}), self._timeout)

        session(self._paths(uuid), "migrate", migrate, self._timeout)

    def migration(self, uuid: str) -> MigrationInfo:
        info = execute(self._paths(uuid), "query-migrate", self._timeout)
        return MigrationInfo(status=str(info.get("status", "none")), downtime_ms=info.get("downtime"),
                             total_ms=info.get("total-time"), error=str(info.get("error-desc", "")))

    def cancel_migration(self, uuid: str) -> None:
        execute(self._paths(uuid), "migrate_cancel", self._timeout)

    def _launch(self, vm: VM, disk: list[str], *, paused: bool, seed: Mapping[str, bytes],
                nics: Mapping[str, str], incoming: bool, hdd: list[str] | None) -> None:
        paths = self._paths(vm.uuid)
        paths.root.mkdir(parents=True, exist_ok=True)
        build_seed(paths.cidata, seed)
        if self._guacamole is not None:
            write_vnc_password(paths)

        def argv(guacamole: GuacamoleVNC | None) -> list[str]:
            line = command_line(vm, disk, paths, self.accel, paused=paused, seed=drive_options(paths.cidata),
                                nics=nics, guacamole=guacamole, incoming=incoming, hdd=hdd)
            return ["ip", "netns", "exec", self._netns, *line] if self._netns else line

        try:
            try:
                start(argv(self._guacamole), paths)
            except QEMUStartError as exc:
                if self._guacamole is None or _NO_FREE_PORT not in str(exc):
                    raise
                # Every port of the range is taken: the VM runs all the same, without a screen for
                # Guacamole (its record says so, and the API's refusal names why it may be).
                log.warning("vm=%s: no free port for Guacamole's VNC server on %s (UCLOUD_GUACAMOLE_VNC_PORTS=%d); "
                            "starting it without one", vm.uuid, self._guacamole.address, self._guacamole.ports)
                start(argv(None), paths)
        except (QEMUStartError, subprocess.TimeoutExpired) as exc:
            kill(paths, self._timeout)  # nothing may run after a failed start
            raise QEMUStartError(str(exc)) from None

    def pause(self, uuid: str) -> None:
        execute(self._paths(uuid), "stop", self._timeout)

    def resume(self, uuid: str) -> None:
        execute(self._paths(uuid), "cont", self._timeout)

    def reset(self, uuid: str) -> None:
        execute(self._paths(uuid), "system_reset", self._timeout)

    def powerdown(self, uuid: str) -> None:
        paths = self._paths(uuid)
        if status(paths, self._timeout) != "running":
            execute(paths, "cont", self._timeout)  # a paused guest cannot see the power button
        execute(paths, "system_powerdown", self._timeout)

    def kill(self, uuid: str) -> None:
        kill(self._paths(uuid), self._timeout)

    def leftovers(self) -> set[str]:
        directory = self._run_dir / "vms"
        return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

    def forget(self, uuid: str) -> None:
        shutil.rmtree(self._paths(uuid).root, ignore_errors=True)
