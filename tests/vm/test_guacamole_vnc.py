"""The QEMU driver's VNC server for Guacamole, on real QEMUs (started with their CPUs stopped: no
guest needs to boot): a free port of the range, a fresh password per start that is on no command
line, and a VM that still starts — without one — when every port of the range is taken."""

from __future__ import annotations

import random
import socket
import stat
from pathlib import Path

from ucloud_common.vm import VM
from ucloud_vm.driver import RunState
from ucloud_vm.paths import VMPaths
from ucloud_vm.qemu import GuacamoleVNC, QemuDriver


def a_vm(uuid: str) -> VM:
    return VM.model_validate({"uuid": uuid, "owner": "alice", "name": uuid, "image": "img",
                              "specs": {"cpu": 1, "ram": 0.25, "ssd": 1}})


def test_each_qemu_takes_a_free_port_with_a_fresh_password_or_starts_without_one(tmp_path: Path) -> None:
    # An address of its own on loopback, so that no other test's VNC server takes the two ports.
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    driver = QemuDriver(tmp_path / "run", "tcg", guacamole=GuacamoleVNC(address, 2))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1024 * 1024))
    taken = socket.create_server((address, 5900))  # someone else's: the first QEMU must skip it
    try:
        started = []
        for uuid in ("vm-a", "vm-b", "vm-c"):
            driver.start(a_vm(uuid), [f"file={disk}", "format=raw", "readonly=on"], paused=True,
                         seed={"meta-data": b""}, nics={})
            started.append(uuid)
        a, b, c = (driver.observe(uuid) for uuid in started)
        assert a.state is b.state is c.state is RunState.PAUSED
        assert a.vnc is not None and (a.vnc.address, a.vnc.port) == (address, 5901)
        # vm-a took 5901, 5900 is someone else's: vm-b has none, and runs all the same, as vm-c.
        assert b.vnc is None and c.vnc is None
        paths = VMPaths.of(tmp_path / "run", "vm-a")
        assert stat.S_IMODE(paths.vnc_password.stat().st_mode) == 0o600
        assert a.vnc.password == paths.vnc_password.read_text() and len(a.vnc.password) == 8
        pid = int(paths.pidfile.read_text())
        assert a.vnc.password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

        driver.kill("vm-a")
        driver.start(a_vm("vm-a"), [f"file={disk}", "format=raw", "readonly=on"], paused=True,
                     seed={"meta-data": b""}, nics={})
        again = driver.observe("vm-a").vnc
        assert again is not None and again.port == 5901 and again.password != a.vnc.password  # a new one each start
    finally:
        taken.close()
        for uuid in ("vm-a", "vm-b", "vm-c"):
            driver.kill(uuid)
