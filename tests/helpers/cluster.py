"""Simulated hosts and VMs written straight into etcd, as agents and the API would write them."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable

from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.states import Requested
from ucloud_common.store import Conflict, KeptLease, Store
from ucloud_common.vm import VMS, VM


def register_host(store: Store, name: str, cpu: int = 8, ram: float = 32, ssd: int = 500,
                  storage: tuple[str, ...] = ("local",), ttl: int = 10) -> KeptLease:
    """A live host: its liveness key on a kept lease (close the lease to let it die), then its record."""
    lease = KeptLease(store, ttl=ttl, interval=ttl / 4)
    existing = store.get(HOSTS_ALIVE, name)
    if existing is not None:
        store.delete(HOSTS_ALIVE, name)
    store.create(HOSTS_ALIVE, name, HostAlive(agent_id=uuidlib.uuid4().hex), lease=lease.id)
    record = Host(name=name, capacity=Specs(cpu=cpu, ram=ram, ssd=ssd), storage_backends=storage)
    current = store.get(HOSTS, name)
    if current is None:
        store.create(HOSTS, name, record)
    else:  # an agent coming back says UP
        store.replace(HOSTS, name, current.value.evolve(status="UP", capacity=record.capacity,
                                                        storage_backends=storage), current.mod_revision)
    return lease


def create_vm(store: Store, name: str | None = None, owner: str = "alice", cpu: int = 1, ram: float = 1,
              ssd: int = 10, **fields: object) -> str:
    uuid = str(uuidlib.uuid4())
    store.create(VMS, uuid, VM.model_validate({"uuid": uuid, "owner": owner, "name": name or uuid[:8],
                                               "image": "tiny", "specs": {"cpu": cpu, "ram": ram, "ssd": ssd},
                                               **fields}))
    return uuid


def wait_for(condition: Callable[[], object], timeout: float, what: str = "condition") -> float:
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)


def vm(store: Store, uuid: str) -> VM:
    found = store.get(VMS, uuid)
    assert found is not None, uuid
    return found.value


def request_deletion(store: Store, uuid: str, timeout: float = 15) -> None:
    """Ask for the VM's deletion as the API does (requested DELETED, a new generation), by
    compare-and-swap, again while the agent writes meanwhile."""

    def ask() -> bool:
        current = store.get(VMS, uuid)
        assert current is not None, uuid
        try:
            store.replace(VMS, uuid, current.value.evolve(requested=Requested.DELETED,
                                                          generation=current.value.generation + 1),
                          current.mod_revision)
        except Conflict:
            return False
        return True
    wait_for(ask, timeout, f"the deletion of {uuid} requested")
