"""Hand-built hosts, VMs and views for the scheduler's decision tests (no etcd)."""

from __future__ import annotations

from ucloud_common.host import Host
from ucloud_common.store import Snapshot, Versioned
from ucloud_common.vm import VM
from ucloud_scheduler.view import View


def vm(uuid: str, cpu: int = 1, ram: float = 1, ssd: int = 10, hdd: int = 0, **fields: object) -> VM:
    return VM.model_validate({"uuid": uuid, "owner": "alice", "name": uuid, "image": "tiny",
                              "specs": {"cpu": cpu, "ram": ram, "ssd": ssd, "hdd": hdd}, **fields})


def host(name: str, cpu: int = 4, ram: float = 16, ssd: int = 100, hdd: int = 0, **fields: object) -> Host:
    return Host.model_validate({"name": name, "capacity": {"cpu": cpu, "ram": ram, "ssd": ssd, "hdd": hdd},
                                **fields})


def view_with(*hosts: Host, alive: tuple[str, ...] | None = None, vms: tuple[VM, ...] = ()) -> View:
    """Every record at revision 1, and the liveness stream seen up to it (so a host not `alive` is
    known dead)."""
    view = View()
    view.apply_hosts(Snapshot({h.name: Versioned(h.name, h, 1, 1) for h in hosts}, 1))
    view.apply_alive(Snapshot(dict.fromkeys(alive if alive is not None else (h.name for h in hosts)), 1))  # type: ignore[arg-type]
    view.apply_vms(Snapshot({v.uuid: Versioned(v.uuid, v, 1, 1) for v in vms}, 1))
    return view
