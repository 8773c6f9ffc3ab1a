"""Benchmark: consoles — from asking for a ticket to the VM's first screen, and how many consoles one
host's console proxy holds open at once.

A real cluster (etcd, the API under gunicorn, scheduler, agent, the tiny guest under TCG) and the
host's `ucloud-vm console-proxy`. This script is the client, speaking RFB 3.8 over the websocket
itself (security type None, shared, raw encoding: what noVNC does before it asks for compression).

1. Ticket → first frame, for R rounds: POST /vms/<uuid>/console {"type": "vnc"} answered, the
   websocket open (the proxy has consumed the ticket in etcd and connected the VM's VNC socket), the
   server's ServerInit, and the whole first FramebufferUpdate of the full screen. Then the serial
   console: ticket → the first byte the guest echoes after a newline is typed.
2. Consoles held at once: VNC consoles are opened and handshaken to ServerInit and kept open, in
   steps up to --max; after each step, the proxy's RSS and open fds, and whether every console
   still answers a FramebufferUpdateRequest. QEMU's VNC server takes only so many clients per VM
   (its `connections=`, 32 by default): the first VM is filled until QEMU refuses one, and as many
   more VMs are booted as --max needs at that many consoles each, so that what stops the count is
   the proxy. The first console that fails to open or answer ends the run, with why.

    .venv/bin/python -m tests.bench.console [--rounds 20] [--max 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.bench.stats import percentile
from tests.helpers.etcd import free_port
from tests.helpers.processes import Cluster, running_cluster, wait_until
from tests.helpers.tiny import BOOTED
from ucloud_common.console import PROXIES

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}
STEPS = (50, 100, 200, 400, 800, 1600, 3200, 6400)
AT_ONCE = 8
TIMEOUT = 30.0


class RFBError(Exception):
    pass


class RFB:
    """The client end of one VNC console: a byte stream over the websocket's messages (the proxy
    sends what it reads from QEMU, in chunks that need not match RFB messages)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._buffer = bytearray()
        self.width = self.height = self.bytes_per_pixel = 0

    async def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            message = await self.ws.recv()
            self._buffer += message if isinstance(message, bytes) else message.encode()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def handshake(self) -> None:
        """Version, security type None, ClientInit (shared), to ServerInit."""
        version = await self.read(12)
        if not version.startswith(b"RFB 003."):
            raise RFBError(f"not an RFB server: {version!r}")
        await self.ws.send(b"RFB 003.008\n")
        (count,) = await self.read(1)
        if count == 0:
            raise RFBError(f"refused: {await self._reason()}")
        if 1 not in await self.read(count):
            raise RFBError("the server wants authentication")
        await self.ws.send(b"\x01")
        (result,) = struct.unpack(">I", await self.read(4))
        if result != 0:
            raise RFBError(f"security failed: {await self._reason()}")
        await self.ws.send(b"\x01")  # ClientInit: shared, other clients stay
        self.width, self.height = struct.unpack(">HH", await self.read(4))
        self.bytes_per_pixel = (await self.read(16))[0] // 8
        (name_length,) = struct.unpack(">I", await self.read(4))
        await self.read(name_length)

    async def frame(self, width: int, height: int) -> int:
        """Ask for the top-left width × height of the screen, whole (not incremental); read the
        FramebufferUpdate that answers it. Returns its size in bytes."""
        await self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        while (kind := (await self.read(1))[0]) != 0:
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                (length,) = struct.unpack(">3xI", await self.read(7))
                await self.read(length)
                continue
            raise RFBError(f"unexpected server message {kind}")
        (rectangles,) = struct.unpack(">xH", await self.read(3))
        size = 4
        for _ in range(rectangles):
            _, _, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
            if encoding != 0:
                raise RFBError(f"encoding {encoding} though only raw was offered")
            size += 12 + len(await self.read(w * h * self.bytes_per_pixel))
        return size

    async def _reason(self) -> str:
        (length,) = struct.unpack(">I", await self.read(4))
        return (await self.read(length)).decode(errors="replace")


def why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        return f"the proxy closed the websocket: {exc.rcvd.code} {exc.rcvd.reason!r}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:.0f} s"
    return f"{type(exc).__name__}: {exc}"


async def ticket(cluster: Cluster, uuid: str, kind: str) -> str:
    status, body = await asyncio.to_thread(cluster.call, "POST", f"/api/v1/vms/{uuid}/console", {"type": kind})
    if status != 201:
        raise RFBError(f"POST console: {status} {body}")
    return str(body["url"])


async def open_vnc(cluster: Cluster, uuid: str) -> RFB:
    """A VNC console to `uuid`, handshaken to ServerInit."""
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(await ticket(cluster, uuid, "vnc"), max_size=2**22, open_timeout=TIMEOUT)
        rfb = RFB(ws)
        try:
            await rfb.handshake()
        except BaseException:
            await ws.close()
            raise
        return rfb


async def vnc_round(cluster: Cluster, uuid: str, screen: dict[str, int]) -> dict[str, float]:
    start = time.monotonic()
    url = await ticket(cluster, uuid, "vnc")
    posted = time.monotonic()
    async with connect(url, max_size=2**22, open_timeout=TIMEOUT) as ws:
        opened = time.monotonic()
        rfb = RFB(ws)
        async with asyncio.timeout(TIMEOUT):
            await rfb.handshake()
            initialised = time.monotonic()
            screen.update(width=rfb.width, height=rfb.height, bytes=await rfb.frame(rfb.width, rfb.height))
        framed = time.monotonic()
    return {"post": posted - start, "websocket": opened - start, "server_init": initialised - start,
            "first_frame": framed - start}


async def serial_round(cluster: Cluster, uuid: str) -> dict[str, float]:
    start = time.monotonic()
    url = await ticket(cluster, uuid, "serial")
    posted = time.monotonic()
    async with connect(url, open_timeout=TIMEOUT) as ws:
        opened = time.monotonic()
        await ws.send(b"\n")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        echoed = time.monotonic()
    return {"post": posted - start, "websocket": opened - start, "first_byte": echoed - start}


@dataclass
class Held:
    consoles: dict[str, list[RFB]]  # VM → its open consoles

    def count(self) -> int:
        return sum(len(rfbs) for rfbs in self.consoles.values())


def proxy_usage(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mib": rss_kib // 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def nofile_limit(pid: int) -> str:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return f"{soft} soft, {hard} hard"


async def fill_first_vm(cluster: Cluster, uuid: str, most: int, held: Held) -> tuple[int, str]:
    """Open consoles to one VM one at a time until QEMU refuses one or `most` are open; how many it
    took and why it stopped."""
    while len(held.consoles[uuid]) < most:
        try:
            held.consoles[uuid].append(await open_vnc(cluster, uuid))
        except (ConnectionClosed, RFBError, TimeoutError, OSError) as exc:
            return len(held.consoles[uuid]), why(exc)
    return most, f"--max ({most}) reached"


async def open_more(cluster: Cluster, held: Held, target: int, per_vm: int) -> list[str]:
    """Open consoles up to `target` in all, at most `per_vm` to a VM; the reasons of those that
    failed. The VMs fill in parallel, each one console at a time (see `at_once`)."""
    wanted = target - held.count()
    quota: dict[str, int] = {}
    for uuid, rfbs in held.consoles.items():
        quota[uuid] = max(0, min(per_vm - len(rfbs), wanted))
        wanted -= quota[uuid]

    async def fill(uuid: str) -> str | None:
        for _ in range(quota[uuid]):
            try:
                held.consoles[uuid].append(await open_vnc(cluster, uuid))
            except (ConnectionClosed, RFBError, TimeoutError, OSError) as exc:
                return why(exc)
        return None

    return [reason for reason in await asyncio.gather(*(fill(uuid) for uuid in quota)) if reason]


async def at_once(cluster: Cluster, uuid: str, count: int) -> list[str]:
    """Open `count` consoles to one VM at the same instant (as tabs reconnecting at once would); the
    reasons of those that failed. QEMU listens on the VNC socket with a backlog of 1."""
    results = await asyncio.gather(*(open_vnc(cluster, uuid) for _ in range(count)), return_exceptions=True)
    for result in results:
        if isinstance(result, RFB):
            await result.ws.close()
    return [why(result) for result in results if isinstance(result, BaseException)]


async def all_answer(held: Held) -> list[str]:
    """Every held console asked for a 16×16 corner of the screen; the reasons of those that failed."""

    async def one(rfb: RFB) -> None:
        async with asyncio.timeout(TIMEOUT):
            await rfb.frame(16, 16)

    results = await asyncio.gather(*(one(rfb) for rfbs in held.consoles.values() for rfb in rfbs),
                                   return_exceptions=True)
    return [why(result) for result in results if isinstance(result, BaseException)]


def create(cluster: Cluster, name: str) -> str:
    status, vm = cluster.call("POST", "/api/v1/vms", {"name": name, "specs": SPECS, "image": "tiny"})
    assert status == 201, vm
    return str(vm["uuid"])


def suspended(cluster: Cluster, count: int) -> list[str]:
    """`count` VMs suspended as soon as they run: their QEMUs serve their screens, and the guests (≈ 9%
    of a core each when idle under TCG) leave the two cores to the proxy."""
    uuids = []
    for i in range(count):
        uuids.append(create(cluster, f"held{i}"))
        cluster.wait(uuids[-1], "RUNNING", 120)
        status, body = cluster.call("POST", f"/api/v1/vms/{uuids[-1]}/suspend")
        assert status in (200, 202), body
        cluster.wait(uuids[-1], "SUSPENDED", 60)
    return uuids


def start_proxy(cluster: Cluster, nofile: int) -> subprocess.Popen[bytes]:
    """The host's console proxy, started with a soft limit of `nofile` open files (as a service gets
    from systemd, whose default is 1024) under this script's hard limit; the proxy raises its soft
    limit to the hard one as it starts."""
    proxy = subprocess.Popen(["prlimit", f"--nofile={nofile}:", "--", str(Path(sys.executable).parent / "ucloud-vm"),
                              "console-proxy", "--hostname", "h1", "--address", "127.0.0.1", "--bind", "127.0.0.1"],
                             env=cluster.env, stdout=(cluster.root / "proxy.log").open("ab"), stderr=subprocess.STDOUT)
    cluster.others.append(proxy)
    wait_until(lambda: cluster.store.get(PROXIES, "h1") is not None, 30, "the console proxy's registration")
    return proxy


def summary(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"median": statistics.median(r[key] for r in rounds), "p99": percentile([r[key] for r in rounds], 99)}
            for key in rounds[0]}


async def ticket_to_frame(cluster: Cluster, uuid: str, rounds: int) -> dict[str, Any]:
    screen: dict[str, int] = {}
    vnc = summary([await vnc_round(cluster, uuid, screen) for _ in range(rounds)])
    serial = summary([await serial_round(cluster, uuid) for _ in range(rounds)])
    print(f"{'ticket → …':32} {'median':>8} {'p99':>8}")
    for label, key in (("POST answered", "post"), ("websocket open", "websocket"),
                       ("RFB ServerInit", "server_init"), ("first frame (whole screen)", "first_frame")):
        print(f"{'vnc: ' + label:32} {vnc[key]['median'] * 1000:6.1f}ms {vnc[key]['p99'] * 1000:6.1f}ms")
    for label, key in (("POST answered", "post"), ("websocket open", "websocket"),
                       ("first byte echoed", "first_byte")):
        print(f"{'serial: ' + label:32} {serial[key]['median'] * 1000:6.1f}ms {serial[key]['p99'] * 1000:6.1f}ms")
    print(f"the screen: {screen['width']}×{screen['height']}, a whole frame {screen['bytes'] // 1024} KiB (raw)")
    return {"rounds": rounds, "vnc_s": vnc, "serial_s": serial, "screen": screen}


async def held_at_once(cluster: Cluster, proxy: int, first: str, most: int) -> dict[str, Any]:
    print(f"console proxy (pid {proxy}): open files {nofile_limit(proxy)}")
    crowd = await at_once(cluster, first, AT_ONCE)
    print(f"{AT_ONCE} consoles to one VM opened at the same instant: {AT_ONCE - len(crowd)} opened"
          + (f", {len(crowd)} failed: {crowd[0]}" if crowd else ""))
    held = Held({first: []})
    per_vm, stopped = await fill_first_vm(cluster, first, most, held)
    print(f"one VM's VNC server took {per_vm} consoles at once; then: {stopped}")
    started = time.monotonic()
    more = suspended(cluster, math.ceil(most / max(1, per_vm)) - 1)
    held.consoles.update({uuid: [] for uuid in more})
    print(f"started and suspended {len(more)} more VMs in {time.monotonic() - started:.0f} s")
    steps: list[dict[str, Any]] = []
    limit = f"--max ({most}) reached"
    for target in sorted({t for t in STEPS if held.count() < t < most} | {most}):
        started = time.monotonic()
        failed = await open_more(cluster, held, target, per_vm)
        opened = time.monotonic() - started
        failed += await all_answer(held)
        step = {"held": held.count(), "open_s": round(opened, 1), **proxy_usage(proxy), "all_answer": not failed}
        steps.append(step)
        print(f"held {step['held']:5} (opened in {opened:5.1f} s)  proxy RSS {step['rss_mib']:4} MiB  "
              f"fds {step['fds']:5}  all answer: {'yes' if not failed else f'no, {len(failed)} failed'}")
        if failed:
            limit = f"{failed[0]} (the proxy's open files: {step['fds']}; its limit: {nofile_limit(proxy)})"
            print(f"stopped: {limit}")
            break
    for rfbs in held.consoles.values():
        await asyncio.gather(*(rfb.ws.close() for rfb in rfbs), return_exceptions=True)
    return {"proxy_nofile": nofile_limit(proxy), "at_once_failed": len(crowd), "per_vm": per_vm,
            "per_vm_stop": stopped, "vms": len(held.consoles), "steps": steps, "limit": limit}


async def measure(cluster: Cluster, proxy: int, rounds: int, most: int) -> dict[str, Any]:
    first = create(cluster, "shown")
    wait_until(lambda: BOOTED in cluster.serial("h1", first), 120, "the guest's boot")
    return {**await ticket_to_frame(cluster, first, rounds), **await held_at_once(cluster, proxy, first, most)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max", type=int, default=1000, help="consoles to hold at once at most")
    parser.add_argument("--proxy-nofile", type=int, default=1024,
                        help="the proxy's soft limit of open files when it starts (systemd's default)")
    args = parser.parse_args()
    # This script holds one socket per console; QEMU (started from here) inherits the limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        # The held consoles' VMs are suspended: they need no cores, little memory, and a sparse disk.
        capacity = {"cpu": "1000", "ram": "1000", "ssd": "1000"}
        with running_cluster(root, capacity=capacity, UCLOUD_CONSOLE_PORT=str(free_port())) as cluster:
            proxy = start_proxy(cluster, args.proxy_nofile)
            result = asyncio.run(measure(cluster, proxy.pid, args.rounds, args.max))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
