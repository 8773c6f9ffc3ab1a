"""Where a VM's runtime files live on this host: one directory per VM under the agent's run dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ucloud_common.record import check_key_part


@dataclass(frozen=True)
class VMPaths:
    root: Path

    @classmethod
    def of(cls, run_dir: Path, uuid: str) -> VMPaths:
        return cls(run_dir / "vms" / check_key_part(uuid))

    @property
    def qmp(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def qmp_events(self) -> Path:
        """A second QMP monitor, held by the agent to hear QEMU's events (ucloud_vm.qmp_events)."""
        return self.root / "events.sock"

    @property
    def vnc(self) -> Path:
        return self.root / "vnc.sock"

    @property
    def serial(self) -> Path:
        """Everything the guest wrote on its serial port, kept across restarts."""
        return self.root / "serial.log"

    @property
    def serial_socket(self) -> Path:
        """The serial port itself, interactive: one client at a time (the console proxy, or root's
        `socat - UNIX-CONNECT:…`); what the guest writes is logged whether or not one is connected."""
        return self.root / "serial.sock"

    @property
    def vnc_password(self) -> Path:
        """The password of the VM's VNC server on TCP (for Guacamole), read by QEMU at its start and
        by the agent to record it; only root reads it."""
        return self.root / "vnc-password"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def cidata(self) -> Path:
        """The VM's cloud-init seed drive (see ucloud_vm.cidata)."""
        return self.root / "cidata.img"

    @property
    def qemu_log(self) -> Path:
        return self.root / "qemu.log"
