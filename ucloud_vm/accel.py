"""KVM or TCG: decided once when the agent starts, by a real boot under KVM, never by /dev/kvm alone.

On some machines /dev/kvm exists but cannot boot a stock kernel (a paravirtual KVM that needs a
special guest): a probe that only opened /dev/kvm would pick KVM, and every VM would hang.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from pathlib import Path

from ucloud_vm.qemu import machine_args

log = logging.getLogger(__name__)

BOOTED = "ucloud-tiny: booted"
PROBE_SECONDS = 8.0


def choose(setting: str, probe_dir: Path, binary: str = "qemu-system-x86_64") -> str:
    if setting in ("kvm", "tcg"):
        log.info("accelerator %s (set in configuration)", setting)
        return setting
    if not Path("/dev/kvm").exists():
        log.info("accelerator tcg: no /dev/kvm")
        return "tcg"
    kernel, initrd = probe_dir / "vmlinuz", probe_dir / "initrd.gz"
    if not (kernel.is_file() and initrd.is_file()):
        log.warning("accelerator tcg: no probe image in %s to prove KVM works (build it with "
                    "deploy/build-tiny-image.sh)", probe_dir)
        return "tcg"
    if probe_kvm(kernel, initrd, binary):
        log.info("accelerator kvm: a probe guest booted under KVM")
        return "kvm"
    log.warning("accelerator tcg: /dev/kvm exists but a probe guest did not boot under KVM within %.0f s",
                PROBE_SECONDS)
    return "tcg"


def probe_kvm(kernel: Path, initrd: Path, binary: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="ucloud-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        process = subprocess.Popen(
            [binary, *machine_args("kvm", 1, 128), "-no-reboot", "-serial", f"file:{serial}", "-kernel", str(kernel), "-initrd", str(initrd),
             "-append", "console=ttyS0 quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + PROBE_SECONDS
            while time.monotonic() < deadline and process.poll() is None:
                if serial.exists() and BOOTED in serial.read_text(errors="replace"):
                    return True
                time.sleep(0.1)
            return False
        finally:
            process.kill()
            process.wait()
