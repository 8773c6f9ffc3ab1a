"""Live migration of the tiny guest between two bare QEMUs on this machine, by hand over QMP: the
yardstick that ucloud's own migration is measured against (issue 15, item 6), and the proof of the
QMP flow the agents will run (docs/migration-design.md records what it measured).

One guest boots on its disk (a qcow2 overlay on the tiny image, or with --rbd a clone in a one-node
Ceph that it starts), starts a counter on its serial console (which also writes the disk each tick),
and is then migrated back and forth, one round per move, never more than two QEMUs at a time:

  destination  `-incoming defer`, `migrate-set-capabilities events`, `migrate-incoming tcp:127.0.0.1:0`,
               `query-migrate` → the port it listens on (what the agent would publish in etcd)
  source       `migrate-set-capabilities` (events; pause-before-switchover with --pause),
               `migrate-set-parameters` (downtime-limit, max-bandwidth), `migrate`, then the MIGRATION
               events; with --pause, at `pre-switchover` the disk's lock holders are listed (--rbd)
               and `migrate-continue`;
               at `completed`, `query-migrate` (total-time, downtime, setup-time), then `quit`.

Printed per round: QEMU's own downtime and total time, the downtime seen from the events (the source's
STOP to the destination's RESUME, both stamped by QEMU with this machine's clock), the time spent paused
before switchover, and the counter's last value on the source and first on the destination (no reboot:
it goes on). With --fault, one round injects a failure instead and prints what each side ended in.

Each round then watches the guest on its new QEMU for --check seconds and gives a verdict: "ok" when its
counter goes on to the end of that time, its serial log has no kernel oops and QEMU says `running`;
else "BROKEN" with what was seen, and the next round starts from a freshly booted guest. This is the
hunt for the guest corruption seen once in about five long throttled migrations through ucloud (the
README's "Live migration"): --poll does during each copy what ucloud's agents do to the two QEMUs, and
--like-ucloud starts them with ucloud's own command line (`ucloud_vm.qemu.command_line`); --strict
--compare-ram compares the guest's RAM on both sides after the copy (docs/migration-design.md, "Long
throttled migrations lose guest writes under TCG": they differ after long throttled copies).

    .venv/bin/python -m tests.bench.migration_bare [--rounds 5] [--ram 128] [--rbd] [--pause]
        [--strict] [--downtime-limit 100] [--max-bandwidth 1000] [--fault NAME] [--after NAME] (FAULTS, AFTER below)
        [--check 10] [--deadline 120] [--counter bench|test] [--poll] [--like-ucloud] [--strict --compare-ram]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from tests.helpers.tiny import BOOTED, tiny_image
from ucloud_common.cidata import hostname_for, seed_files
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_vm import qemu as ucloud_qemu
from ucloud_vm.cidata import build_seed, drive_options
from ucloud_vm.paths import VMPaths

MIB = 1024 * 1024
# The guest's counter: a line a tick on its serial console, and the tick written to the disk (512 MiB
# in, past the tiny image's data) so that the disk has a writer, whose RBD lock must change hands.
COUNTER = ("i=0; while :; do echo \"tick $i\"; echo $i | dd of=/dev/vda bs=512 seek=1048576 conv=fsync "
           "2>/dev/null; i=$((i+1)); sleep 0.1; done\n")
# The counter of the migration tests (tests/ceph/test_migration.py), where the corruption was seen: a
# tick a second in the background, no disk write (--counter test).
TEST_COUNTER = "(i=0; while :; do i=$((i+1)); echo tick-$i; sleep 1; done) &\n"
COUNTERS = {"bench": COUNTER, "test": TEST_COUNTER}
TICK = re.compile(rb"tick[ -](\d+)")
# What a guest kernel in trouble prints on its console.
KERNEL_TROUBLE = re.compile(rb"Oops|BUG|general protection|Call Trace|Kernel panic")
# The record ucloud's command line is built from (--like-ucloud): the tiny guest as the migration tests
# create it (1 CPU, --ram MiB, an rbd disk, no NIC).
BENCH_VM = "0b0e4c1e-0000-4000-8000-00000000be0c"


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a QEMU in the foreground (it is this benchmark's child: killed and reaped by it), its
    stderr to `log`."""
    with open(log, "wb") as stderr:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=stderr)


class Daemon:
    """A QEMU that daemonized (--like-ucloud), by its pid: the calls of `subprocess.Popen` used here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        return None if ucloud_qemu.alive(self.pid) else 0  # its exit code went to init

    def send_signal(self, number: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"qemu pid {self.pid}", timeout or 0)
            time.sleep(0.02)
        return 0


@dataclass
class Qemu:
    """One QEMU process of the guest, with its own directory (QMP socket, serial socket and log)."""

    directory: Path
    drive: str
    ram_mib: int = 128
    like_ucloud: bool = False
    # A second QMP monitor (agent.sock) for --poll's fresh connections: a QMP socket serves one client
    # at a time, and this benchmark's own stays connected for the events.
    agent_socket: bool = False
    process: subprocess.Popen[bytes] | Daemon | None = None
    qmp: QMPClient = field(default_factory=lambda: QMPClient("bench"))
    events: list[dict[str, Any]] = field(default_factory=list)
    _collector: asyncio.Task[None] | None = None

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def agent_qmp(self) -> Path:
        return self.directory / "agent.sock"

    async def start(self, incoming: bool, paused: bool = False) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        extra = ["-qmp", f"unix:{self.agent_qmp},server=on,wait=off"] if self.agent_socket else []
        if self.like_ucloud:
            self.process = Daemon(self._start_like_ucloud(incoming, paused, extra))
        else:
            argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-accel", "tcg",
                    "-smp", "1", "-m", str(self.ram_mib), "-no-shutdown",
                    "-qmp", f"unix:{self.directory / 'qmp.sock'},server=on,wait=off",
                    "-chardev", (f"socket,id=serial0,path={self.directory / 'serial.sock'},server=on,wait=off,"
                                 f"logfile={self.serial_log},logappend=on"),
                    "-serial", "chardev:serial0", "-drive", f"{self.drive},if=virtio,id=disk0", *extra]
            if incoming:
                argv += ["-incoming", "defer"]
            if paused:
                argv.append("-S")
            self.process = spawn(argv, self.directory / "qemu.log")
        for _ in range(200):
            if (self.directory / "qmp.sock").exists():
                break
            await asyncio.sleep(0.05)
        await self.qmp.connect(str(self.directory / "qmp.sock"))
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    def _start_like_ucloud(self, incoming: bool, paused: bool, extra: list[str]) -> int:
        """Start QEMU exactly as ucloud's agent does (daemonized; the VGA and its VNC socket, pvpanic,
        the cloud-init seed drive; the rbd drive with discard), by ucloud's own functions; its pid."""
        vm = VM(uuid=BENCH_VM, owner="bench", name="migrating", specs=Specs(cpu=1, ram=self.ram_mib / 1024, ssd=1),
                image="tiny", storage="rbd")
        paths = VMPaths(self.directory)
        build_seed(paths.cidata, seed_files(vm, hostname_for(vm.name), vm.networks))
        disk = self.drive.split(",") + (["discard=unmap"] if self.drive.startswith("file=rbd:") else [])
        argv = ucloud_qemu.command_line(vm, disk, paths, "tcg", paused=paused, seed=drive_options(paths.cidata),
                                        incoming=incoming)
        return ucloud_qemu.start(argv + extra, paths)

    async def _collect(self) -> None:
        async for event in self.qmp.events:
            stamp = event["timestamp"]
            self.events.append({"event": event["event"], "data": event.get("data", {}),
                                "t": stamp["seconds"] + stamp["microseconds"] / 1e6})

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(command, arguments)

    async def wait_event(self, name: str, timeout: float, **data: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event["event"] == name and all(event["data"].get(k) == v for k, v in data.items()):
                    return event
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no {name} {data or ''} within {timeout} s; saw {[e['event'] for e in self.events]}")

    def migration_statuses(self) -> list[str]:
        return [e["data"]["status"] for e in self.events if e["event"] == "MIGRATION"]

    def ticks(self) -> list[int]:
        return [int(n) for n in TICK.findall(self.serial_log.read_bytes())] if self.serial_log.exists() else []

    def type(self, text: str) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.directory / "serial.sock"))
            sock.sendall(text.encode())
            time.sleep(0.2)

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        with suppress(Exception):  # whatever state its QMP is in, the process goes
            await asyncio.wait_for(self.qmp.disconnect(), 2)
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def exited(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout) if self.process else None
        except subprocess.TimeoutExpired:
            return None


async def finished_migration(source: Qemu) -> dict[str, Any]:
    """`query-migrate` once its figures are in. QEMU 7.2 sends the MIGRATION `completed` event before it
    computes total-time and downtime (migration_calculate_complete runs after the state change): asked
    at once, it may answer 0 for both (seen once in a few runs here)."""
    for _ in range(100):
        info = await source.execute("query-migrate")
        if info.get("total-time"):
            return dict(info)
        await asyncio.sleep(0.01)
    raise TimeoutError(f"query-migrate never gave a total time: {info}")


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


class Lockers:
    """Who holds (and who watches) the RBD disk, through ucloud's own Ceph client; nothing without --rbd."""

    def __init__(self, ceph: Any, disk: str) -> None:
        self._ceph = ceph
        self._disk = disk

    def now(self) -> dict[str, list[str]]:
        if self._ceph is None:
            return {}
        clients = self._ceph.image_clients("vms", self._disk)
        return {"lockers": [locker.address for locker in clients.lockers], "watchers": sorted(clients.watchers)}


async def move(source: Qemu, destination: Qemu, args: argparse.Namespace, lockers: Lockers) -> dict[str, Any]:
    """One migration from `source` (running) to `destination` (a fresh QEMU started here)."""
    await destination.start(incoming=True, paused=args.strict)
    await destination.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    await destination.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    listening = await destination.execute("query-migrate")
    port = listening["socket-address"][0]["port"]  # what the destination agent would publish in etcd
    capabilities = [{"capability": "events", "state": True},
                    {"capability": "pause-before-switchover", "state": args.pause}]
    await source.execute("migrate-set-capabilities", {"capabilities": capabilities})
    await source.execute("migrate-set-parameters", {"downtime-limit": args.downtime_limit,
                                                    "max-bandwidth": args.max_bandwidth * MIB})
    source.events.clear()  # a source that was a destination before has its incoming migration's events
    record: dict[str, Any] = {"port": port, "lockers_before": lockers.now()}
    if args.fault == "throttled":
        await source.execute("migrate-set-parameters", {"max-bandwidth": 4 * MIB})
    started = time.monotonic()
    await source.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    if args.fault:
        return await inject(args.fault, source, destination, record, args)
    stop_polling = asyncio.Event()
    polling = asyncio.ensure_future(poll_like_agents(source, destination, stop_polling)) if args.poll else None
    try:
        await switched_over(source, destination, args, record, lockers, started)
    finally:
        stop_polling.set()
        if polling is not None:
            record["polls_answered"] = await polling
    return record


async def compare_ram(source: Qemu, destination: Qemu, size: int) -> dict[str, Any]:
    """The guest's RAM on both sides once the copy is done and neither guest runs (the source stopped
    for good, the destination not started yet): they must be equal page for page; the pages that
    differ are what the migration stream lost."""
    dumps = []
    for qemu in (source, destination):
        dump = qemu.directory / "ram.dump"
        await qemu.execute("pmemsave", {"val": 0, "size": size, "filename": str(dump)})
        dumps.append(dump)
    differing = differing_pages(*dumps, size)
    for dump in dumps:
        dump.unlink()
    return {"pages": len(differing), "first": differing[:20]}


def differing_pages(left_dump: Path, right_dump: Path, size: int) -> list[dict[str, Any]]:
    """The 4 KiB pages that differ between two RAM dumps: their guest-physical address and how many
    of their bytes differ."""
    page = 4096
    differing = []
    with open(left_dump, "rb") as left, open(right_dump, "rb") as right:
        for number in range(size // page):
            a, b = left.read(page), right.read(page)
            if a != b:
                differing.append({"address": hex(number * page), "bytes": sum(x != y for x, y in zip(a, b))})
    return differing


class NotConverged(Exception):
    """The copy did not complete within --deadline and was cancelled; args[0]: the round's record."""


async def switched_over(source: Qemu, destination: Qemu, args: argparse.Namespace, record: dict[str, Any],
                        lockers: Lockers, started: float) -> None:
    """The rest of a `move`: the copy, the switchover, the guest running on the destination."""
    paused_for = 0.0
    if args.pause:
        await source.wait_event("MIGRATION", 120, status="pre-switchover")
        pause_start = time.monotonic()
        record["lockers_at_pre_switchover"] = lockers.now()
        await source.execute("migrate-continue", {"state": "pre-switchover"})
        paused_for = time.monotonic() - pause_start
    try:
        await source.wait_event("MIGRATION", args.deadline, status="completed")
    except TimeoutError:  # as ucloud's agent does at its deadline; the guest runs on at the source
        await source.execute("migrate_cancel")
        await source.wait_event("MIGRATION", 30, status="cancelled")
        record["passes"] = sum(e["event"] == "MIGRATION_PASS" for e in source.events)
        raise NotConverged(record) from None
    wall = time.monotonic() - started
    info = await finished_migration(source)
    if args.strict:  # the destination's guest runs only when told: here at once, in ucloud after the commit
        await destination.wait_event("MIGRATION", 30, status="completed")
        if args.compare_ram:
            record["ram_differences"] = await compare_ram(source, destination, args.ram * MIB)
        await destination.execute("cont")
    try:
        resumed: dict[str, Any] | None = await destination.wait_event("RESUME", 30)
    except TimeoutError:  # arrived not running (a guest that panicked on the way?): the verdict says more
        resumed = None
        record["destination_not_resumed"] = {"status": (await destination.execute("query-status"))["status"],
                                             "source_status": (await source.execute("query-status"))["status"],
                                             "destination_events": [e["event"] for e in destination.events],
                                             "destination_statuses": destination.migration_statuses()}
    stopped = [e for e in source.events if e["event"] == "STOP"][-1]
    record["lockers_after_completed"] = lockers.now()
    if args.after:
        await after_switchover(args.after, source, destination, record, lockers)
    # The source is left alive (postmigrate) while the destination's guest writes: does the disk's
    # lock move to it while the source still has the image open?
    wrote = time.monotonic()
    try:
        await wait_for(lambda: len(destination.ticks()) >= 3, 60, "the counter on the destination")
        record["destination_three_ticks_s"] = round(time.monotonic() - wrote, 2)
    except TimeoutError:  # a guest that arrived broken: the verdict tells what it shows
        record["destination_three_ticks_s"] = None
    record["lockers_after_destination_wrote"] = lockers.now()
    if source.process.poll() is None:
        await source.execute("quit")
    source.exited(10)
    last_on_source = source.ticks()[-1]  # all it printed: the guest's CPUs stopped at switchover
    record["lockers_after_source_quit"] = lockers.now()
    record.update({
        "qemu_downtime_ms": info.get("downtime"), "qemu_total_ms": info.get("total-time"),
        "setup_ms": info.get("setup-time"), "ram_transferred_mib": round(info["ram"]["transferred"] / MIB, 1),
        "event_downtime_ms": round((resumed["t"] - stopped["t"]) * 1000, 1) if resumed else None,
        "paused_before_switchover_ms": round(paused_for * 1000, 1), "wall_s": round(wall, 3),
        "source_statuses": source.migration_statuses(), "destination_statuses": destination.migration_statuses(),
        "last_tick_source": last_on_source,
        "first_tick_destination": next(iter(destination.ticks()), None),
        "passes": sum(e["event"] == "MIGRATION_PASS" for e in source.events),
    })


async def poll_like_agents(source: Qemu, destination: Qemu, stop: asyncio.Event) -> dict[str, int]:
    """Until `stop`, ask the two QEMUs what ucloud's agents ask during a migration, each question on a
    fresh QMP connection (`ucloud_vm.qemu.session`): the source agent looks every 0.2 s (`observe`:
    query-status, qom-list /machine/peripheral, query-vnc-servers; then `migration`: query-migrate),
    the target agent once a second (`observe`). Returns how many looks each got answered."""
    answered = {"source": 0, "destination": 0, "failed": 0}

    async def look(qemu: Qemu, migration: bool) -> None:
        async def session(commands: list[tuple[str, dict[str, Any] | None]]) -> None:
            client = QMPClient("poll")
            await asyncio.wait_for(client.connect(str(qemu.agent_qmp)), 5)
            try:
                for command, arguments in commands:
                    await asyncio.wait_for(client.execute(command, arguments), 5)
            finally:
                with suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 5)

        await session([("query-status", None), ("qom-list", {"path": "/machine/peripheral"}),
                       ("query-vnc-servers", None)])
        if migration:
            await session([("query-migrate", None)])

    async def every(qemu: Qemu, name: str, period: float, migration: bool) -> None:
        while not stop.is_set():
            try:
                await look(qemu, migration)
                answered[name] += 1
            except Exception:  # noqa: BLE001 - a QEMU going away at the end; counted, never fatal
                answered["failed"] += 1
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    await asyncio.gather(every(source, "source", 0.2, True), every(destination, "destination", 1.0, False))
    return answered


async def verdict(qemu: Qemu, seconds: float) -> dict[str, Any]:
    """Whether the guest is sound on `qemu` after it arrived: for `seconds`, its counter goes on (and still
    went on in the last 3 s), its serial log shows no kernel oops, QEMU says `running`."""
    start_ticks = qemu.ticks()
    await asyncio.sleep(max(0.0, seconds - 3))
    before_end = qemu.ticks()
    await asyncio.sleep(min(3.0, seconds))
    ticks = qemu.ticks()
    log = qemu.serial_log.read_bytes() if qemu.serial_log.exists() else b""
    trouble = KERNEL_TROUBLE.search(log)
    status = (await qemu.execute("query-status"))["status"] if qemu.process.poll() is None else "exited"
    problems = []
    if len(ticks) <= len(start_ticks) or len(ticks) <= len(before_end):
        problems.append(f"counter stopped at {ticks[-1] if ticks else None}")
    if trouble:
        problems.append("kernel trouble on the console")
    if status != "running":
        problems.append(f"QEMU {status}")
    result: dict[str, Any] = {"verdict": "BROKEN: " + "; ".join(problems) if problems else "ok",
                              "ticks_during_check": len(ticks) - len(start_ticks)}
    if trouble:
        result["console"] = log[max(0, trouble.start() - 200):trouble.start() + 3000].decode(errors="replace")
    elif problems:
        result["console_tail"] = log[-1500:].decode(errors="replace")
    if problems and status != "exited":  # where its CPU is: spinning, halted, or in a loop of faults
        registers = await qemu.execute("human-monitor-command", {"command-line": "info registers"})
        result["registers"] = registers[:900]
    return result


FAULTS = {
    "kill-destination": "SIGKILL the destination while RAM is copied",
    "kill-source": "SIGKILL the source while RAM is copied",
    "cancel": "migrate_cancel on the source while RAM is copied",
    "cut": "SIGSTOP the destination (a network cut: its socket stops reading), then migrate_cancel after 3 s",
    "cancel-paused": "migrate_cancel while the source waits in pre-switchover (guest stopped)",
    "kill-destination-paused": "SIGKILL the destination while the source waits in pre-switchover",
    "throttled": "start at 4 MiB/s, raise max-bandwidth to the set value after 2 s (a deadline's remedy)",
}


async def inject(fault: str, source: Qemu, destination: Qemu, record: dict[str, Any],
                 args: argparse.Namespace) -> dict[str, Any]:
    """Break (or slow) the migration; report what each side ended in."""
    record["fault"] = fault
    if fault.endswith("-paused"):
        await source.wait_event("MIGRATION", 60, status="pre-switchover")
        record["source_status_at_pause"] = (await source.execute("query-status"))["status"]
    else:
        await source.wait_event("MIGRATION", 30, status="active")
    if fault.startswith("kill-destination"):
        destination.process.send_signal(signal.SIGKILL)
    elif fault == "kill-source":
        source.process.send_signal(signal.SIGKILL)
    elif fault.startswith("cancel"):
        await source.execute("migrate_cancel")
    elif fault == "cut":
        destination.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(3)
        record["source_migrate_while_cut"] = (await source.execute("query-migrate")).get("status")
        started = time.monotonic()
        await source.execute("migrate_cancel")
        await source.wait_event("MIGRATION", 30, status="cancelled")
        record["cancel_took_ms"] = round((time.monotonic() - started) * 1000, 1)
        destination.process.send_signal(signal.SIGCONT)
    elif fault == "throttled":
        await asyncio.sleep(2)
        record["transferred_at_2s_mib"] = round((await source.execute("query-migrate"))["ram"]["transferred"] / MIB, 1)
        await source.execute("migrate-set-parameters", {"max-bandwidth": args.max_bandwidth * MIB})
        if args.pause:
            await source.wait_event("MIGRATION", 60, status="pre-switchover")
            await source.execute("migrate-continue", {"state": "pre-switchover"})
        await source.wait_event("MIGRATION", 60, status="completed")
        record["total_ms"] = (await finished_migration(source))["total-time"]
    await asyncio.sleep(3)
    record["destination_exit"] = destination.exited(5)
    record["destination_last_words"] = (destination.directory / "qemu.log").read_text(errors="replace").strip()[-200:]
    record["source_exit"] = source.process.poll()
    if record["source_exit"] is None:
        record["source_status"] = (await source.execute("query-status"))["status"]
        record["source_migrate"] = (await source.execute("query-migrate")).get("status")
        if record["source_migrate"] == "pre-switchover":  # nothing ends this wait but a cancel (or continue)
            await source.execute("migrate_cancel")
            await source.wait_event("MIGRATION", 30, status="cancelled")
            record["source_status_after_cancel"] = (await source.execute("query-status"))["status"]
        ticks = len(source.ticks())
        await asyncio.sleep(1)
        record["source_counter_goes_on"] = len(source.ticks()) > ticks
    if record["destination_exit"] is None:
        record["destination_status"] = (await destination.execute("query-status"))["status"]
    record["source_statuses"] = source.migration_statuses()
    record["destination_statuses"] = destination.migration_statuses()
    return record


AFTER = {
    "stop-source": "SIGSTOP the source once the migration completed (a source that froze holding the RBD "
                   "lock): how long the destination's guest waits for its first write",
    "cont-source": "QMP cont on the source once the migration completed: does anything stop a second writer?",
}


async def after_switchover(what: str, source: Qemu, destination: Qemu, record: dict[str, Any],
                           lockers: Lockers) -> None:
    ticks = len(destination.ticks())
    if what == "stop-source":
        source.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        await wait_for(lambda: len(destination.ticks()) >= ticks + 3, 120, "the destination's counter")
        record["destination_three_ticks_with_source_stopped_s"] = round(time.monotonic() - stopped, 2)
        record["lockers_with_source_stopped"] = lockers.now()
        source.process.send_signal(signal.SIGKILL)
        source.process.wait()
        return
    try:
        await source.execute("cont")
        record["source_cont"] = "accepted"
    except Exception as exc:  # noqa: BLE001 - QEMU's refusal is the finding
        record["source_cont"] = f"refused: {exc}"
    source_ticks = len(source.ticks())
    await asyncio.sleep(3)
    record["source_status_after_cont"] = (await source.execute("query-status"))["status"]
    record["source_counted_after_cont"] = len(source.ticks()) - source_ticks
    record["destination_counted_meanwhile"] = len(destination.ticks()) - ticks
    record["lockers_after_cont"] = lockers.now()
    source.process.send_signal(signal.SIGKILL)
    source.process.wait()


@contextmanager
def disk(work: Path, rbd: bool) -> Iterator[tuple[str, Lockers]]:
    """The guest's disk as `-drive` options, and a way to list its lock holders."""
    if not rbd:
        overlay = work / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(tiny_image() / "tiny.raw"), str(overlay), "1G"], check=True)
        yield f"file={overlay},format=qcow2,cache=writeback", Lockers(None, "")
        return
    from tests.helpers.ceph import ceph_with_tiny

    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="ucloud-bench-ceph-") as directory, \
            ceph_with_tiny(Path(directory)) as ceph:
        ceph.clone_disk("images", "tiny", "vms", "migrating", 1)
        yield f"file=rbd:vms/migrating:conf={ceph.conf},format=raw,cache=writeback", Lockers(ceph, "migrating")


async def counting_guest(qemu: Qemu, counter: str) -> None:
    """Boot the guest on `qemu` and start its counter."""
    await qemu.start(incoming=False)
    await wait_for(lambda: qemu.serial_log.exists() and BOOTED.encode() in qemu.serial_log.read_bytes(),
                   120, "the guest's first line")
    await asyncio.sleep(1)  # its serial shell starts after the first line
    qemu.type(counter)
    await wait_for(lambda: len(qemu.ticks()) >= 5, 60, "the guest's counter")


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ucloud-bench-migration-", dir="/var/tmp")))
        drive, lockers = stack.enter_context(disk(work, args.rbd))

        def qemu(name: str) -> Qemu:
            return Qemu(work / name, drive, args.ram, like_ucloud=args.like_ucloud, agent_socket=args.poll)

        source = qemu("qemu-0")
        try:
            await counting_guest(source, COUNTERS[args.counter])
            for number in range(1, args.rounds + 1):
                destination = qemu(f"qemu-{number}")
                try:
                    record = await move(source, destination, args, lockers)
                except NotConverged as exc:  # the guest stays on the source: is it sound there?
                    await destination.stop()
                    record = {**exc.args[0], **(await verdict(source, args.check) if args.check else {})}
                    record["verdict"] = f"not converged in {args.deadline:.0f} s, cancelled; source {record.get('verdict')}"
                except BaseException:
                    await destination.stop()
                    raise
                else:
                    if args.fault:
                        results.append(record)
                        print(json.dumps({"round": number, **record}), flush=True)
                        await destination.stop()
                        break
                    await source.stop()
                    source = destination
                    if args.check:
                        record.update(await verdict(source, args.check))
                results.append(record)
                print(json.dumps({"round": number, **record}), flush=True)
                if "BROKEN" in record.get("verdict", ""):  # a broken guest proves nothing more: a fresh one
                    await source.stop()
                    source = qemu(f"qemu-{number}-rebooted")
                    await counting_guest(source, COUNTERS[args.counter])
                await asyncio.sleep(args.settle)
        finally:
            await source.stop()
            if args.keep:  # the consoles and QEMU logs of every QEMU of the run, for a post-mortem
                for log in work.glob("qemu-*/*.log"):
                    kept = args.keep / log.parent.name / log.name
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, kept)
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float]:
        values = [r[key] for r in results if r.get(key) is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}

    figures = {key: stats(key) for key in ("qemu_downtime_ms", "event_downtime_ms", "paused_before_switchover_ms",
                                           "qemu_total_ms", "wall_s")}
    verdicts = [r["verdict"] for r in results if "verdict" in r]
    return {**figures, "rounds": len(results), "broken": sum("BROKEN" in v for v in verdicts),
            "not_converged": sum(v.startswith("not converged") for v in verdicts)} if verdicts else figures


def arguments() -> argparse.ArgumentParser:
    """The options, with their defaults: tests.bench.migration runs this pair with them, so that ucloud
    is measured at the same settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ram", type=int, default=128, help="the guest's MiB")
    parser.add_argument("--rbd", action="store_true", help="the disk in a one-node Ceph (started here)")
    parser.add_argument("--pause", action="store_true",
                        help="with pause-before-switchover (off by default, as docs/migration-design.md recommends)")
    parser.add_argument("--downtime-limit", type=int, default=100, help="ms (QEMU's default: 300)")
    parser.add_argument("--max-bandwidth", type=int, default=1000, help="MiB/s, 0: no limit (QEMU's default: 128)")
    parser.add_argument("--strict", action="store_true",
                        help="destination started with -S and resumed by `cont` after its MIGRATION completed "
                             "(libvirt's way: the guest runs there only once the control plane commits)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--after", choices=sorted(AFTER), help="in every round: " +
                        "; ".join(f"{name}: {what}" for name, what in AFTER.items()))
    parser.add_argument("--check", type=float, default=10.0,
                        help="seconds to watch the guest after each arrival for its verdict (0: none)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds a copy may take before it is cancelled (the guest stays on the source)")
    parser.add_argument("--counter", choices=sorted(COUNTERS), default="bench",
                        help="bench: a tick every 0.1 s, each written to the disk; test: the migration tests' "
                             "tick a second, no disk write")
    parser.add_argument("--compare-ram", action="store_true",
                        help="with --strict: compare the guest's RAM on both sides before the destination runs")
    parser.add_argument("--keep", type=Path, help="a directory to copy every QEMU's serial.log and qemu.log into")
    parser.add_argument("--poll", action="store_true",
                        help="during each copy, ask both QEMUs what ucloud's agents ask, on fresh QMP connections")
    parser.add_argument("--like-ucloud", action="store_true",
                        help="start the QEMUs with ucloud's command line (ucloud_vm.qemu.command_line)")
    parser.add_argument("--fault", choices=sorted(FAULTS), help="one round with a fault: " +
                        "; ".join(f"{name}: {what}" for name, what in FAULTS.items()))
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.fault and args.fault.endswith("-paused"):
        args.pause = True  # these faults strike while the source waits in pre-switchover
    results = asyncio.run(run(args))
    if not args.fault:
        print(json.dumps({"summary": summary(results), "settings": {
            "pause_before_switchover": args.pause, "downtime_limit_ms": args.downtime_limit,
            "max_bandwidth_mib_s": args.max_bandwidth, "ram_mib": args.ram, "strict": args.strict,
            "disk": "rbd" if args.rbd else "qcow2", "poll": args.poll, "like_ucloud": args.like_ucloud,
            "counter": args.counter}}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
