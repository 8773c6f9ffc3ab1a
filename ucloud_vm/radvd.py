"""Router advertisements for the networks this host is the router of: one radvd per host (or per
network namespace), one config file announcing each network's /64 on its bridge.

One process for all networks keeps the per-network cost at zero processes. A change is applied by
SIGHUP, never by a restart: radvd re-reads its config and goes on, so guests never see the router
vanish (a restart sends a final RA with router lifetime 0, which withdraws the default route).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ucloud_common.errors import PermanentError, TemporaryError
from ucloud_common.ipv6 import check_prefix
from ucloud_vm.netns import run_in

log = logging.getLogger(__name__)

# How long radvd gets to write its pid file after daemonizing, and to exit after SIGTERM.
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class RadvdError(TemporaryError):
    """radvd did not start, reload or stop; the config on disk is the wanted one, so applying again
    later is safe."""


@dataclass(frozen=True)
class Announcement:
    """What is announced on one bridge: the network's /64 (SLAAC on) and the link MTU, which tells
    guests the VXLAN overhead (a guest left at 1500 would lose every full-size packet)."""

    prefix: str
    mtu: int
    router: bool = False
    """This host routes the prefix out (the router role): it announces itself as a default router.
    Every other host announces the prefix on-link only (default-router lifetime 0), so guests never
    send traffic for the outside to a host that would drop it."""


def render(announcements: Mapping[str, Announcement]) -> str:
    """radvd.conf announcing each bridge's prefix; PermanentError for a prefix that is not a /64."""
    blocks = []
    for bridge in sorted(announcements):
        announcement = announcements[bridge]
        try:
            prefix = check_prefix(announcement.prefix)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        blocks.append(
            f"interface {bridge} {{\n"
            "    AdvSendAdvert on;\n"
            # The bridge may go before the config is rewritten: radvd must keep serving the others.
            "    IgnoreIfMissing on;\n"
            # Guests ask at boot (router solicitation) and get an answer at once; the unsolicited
            # ones only repair a lost answer, so every 30 s at most is enough.
            "    MaxRtrAdvInterval 30;\n"
            f"    AdvLinkMTU {announcement.mtu};\n"
            f"    AdvDefaultLifetime {1800 if announcement.router else 0};\n"
            f"    prefix {prefix} {{\n"
            "        AdvOnLink on;\n"
            "        AdvAutonomous on;\n"
            "    };\n"
            "};\n"
        )
    return "".join(blocks)


class Radvd:
    """The host's radvd, kept matching the wanted announcements by `apply` (idempotent: calling it
    again with the same announcements does nothing). Files live in `run_dir`: `radvd.conf`,
    `radvd.pid`, `radvd.log`. Found again by its pid file after an agent restart."""

    def __init__(self, run_dir: Path, netns: str | None = None) -> None:
        self.run_dir = run_dir
        self.netns = netns
        self.config = run_dir / "radvd.conf"
        self.pidfile = run_dir / "radvd.pid"
        self.logfile = run_dir / "radvd.log"

    def pid(self) -> int | None:
        """The pid of our radvd if it runs (its pid file names a live radvd with our config)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        # A stale pid file may name a recycled pid: only a radvd reading our config is ours.
        cmdline = _cmdline(pid)
        if not cmdline or not cmdline[0].endswith(b"radvd") or str(self.config).encode() not in cmdline:
            return None
        return pid

    def apply(self, announcements: Mapping[str, Announcement]) -> int | None:
        """Announce exactly `announcements` (bridge → what to announce on it): write the config,
        then start radvd, or SIGHUP it if the config changed; stop it when there is nothing to
        announce. Returns radvd's pid (None when stopped)."""
        if not announcements:
            self._stop()
            return None
        text = render(announcements)
        changed = not self.config.exists() or self.config.read_text() != text
        if changed:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            partial = self.config.with_suffix(".tmp")
            partial.write_text(text)
            partial.replace(self.config)  # radvd never reads half a file
        pid = self.pid()
        if pid is None:
            return self._start()
        if changed:
            os.kill(pid, signal.SIGHUP)
            log.info("radvd %d reloads: %s", pid, ", ".join(sorted(announcements)))
        return pid

    def _start(self) -> int:
        self.pidfile.unlink(missing_ok=True)
        result = run_in(self.netns, ["radvd", "-C", str(self.config), "-p", str(self.pidfile),
                                     "-m", "logfile", "-l", str(self.logfile)])
        if result.returncode != 0:
            raise RadvdError(f"radvd did not start: {result.stderr.strip() or result.stdout.strip()}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while (pid := self.pid()) is None:
            if time.monotonic() > deadline:
                raise RadvdError(f"radvd wrote no pid file within {START_TIMEOUT_S} s (see {self.logfile})")
            time.sleep(0.02)
        log.info("radvd %d started with %s", pid, self.config)
        return pid

    def _stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _cmdline(pid):
                if time.monotonic() > deadline:
                    raise RadvdError(f"radvd {pid} did not exit within {STOP_TIMEOUT_S} s of SIGTERM")
                time.sleep(0.02)
            log.info("radvd %d stopped: nothing left to announce", pid)
        for path in (self.config, self.pidfile):
            path.unlink(missing_ok=True)


def _cmdline(pid: int) -> list[bytes]:
    """The command line of a live process; empty once it exited (a zombie has none either)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.split(b"\0") if raw else []
