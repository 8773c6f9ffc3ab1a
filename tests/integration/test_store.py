"""The store against a real etcd: typed access, compare-and-swap, guards, garbage."""

from __future__ import annotations

import logging
import threading

import pytest

from ucloud_common.config import Settings
from ucloud_common.record import InvalidRecord
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import AlreadyExists, Conflict, Guard, GuardFailed, NotFound, Store
from ucloud_common.vm import VMS, VM


def a_vm(uuid: str = "vm1") -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


def test_create_get_list_delete(store: Store) -> None:
    created = store.create(VMS, "vm1", a_vm())
    got = store.get(VMS, "vm1")
    assert got is not None and got.value == a_vm().model_copy(update={
        "created_at": got.value.created_at, "updated_at": got.value.updated_at})
    assert got.mod_revision == created.mod_revision == created.create_revision
    with pytest.raises(AlreadyExists):
        store.create(VMS, "vm1", a_vm())
    store.create(VMS, "vm2", a_vm("vm2"))
    listing = store.list(VMS)
    assert sorted(listing.items) == ["vm1", "vm2"]
    assert listing.revision >= created.mod_revision
    assert store.delete(VMS, "vm1") is True
    assert store.delete(VMS, "vm1") is False
    assert store.get(VMS, "vm1") is None


def test_replace_is_a_compare_and_swap(store: Store) -> None:
    first = store.create(VMS, "vm1", a_vm())
    second = store.replace(VMS, "vm1", first.value.evolve(status=Status.SCHEDULED_DEPLOY), first.mod_revision)
    assert second.mod_revision > first.mod_revision and second.create_revision == first.create_revision
    with pytest.raises(Conflict, match="changed since"):
        store.replace(VMS, "vm1", first.value.evolve(status=Status.ERROR), first.mod_revision)
    with pytest.raises(Conflict):
        store.delete(VMS, "vm1", mod_revision=first.mod_revision)
    got = store.get(VMS, "vm1")
    assert got is not None and got.value.status is Status.SCHEDULED_DEPLOY


def test_twenty_concurrent_writers_lose_no_update(settings: Settings, store: Store) -> None:
    store.create(VMS, "counter", a_vm("counter"))
    writers, increments = 20, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write() -> None:
        own = Store(settings)  # one connection per writer, as separate processes would have
        try:
            barrier.wait()
            for _ in range(increments):
                own.update(VMS, "counter", lambda vm: vm.evolve(restarts=vm.restarts + 1))
        except BaseException as exc:  # reported below; a thread's exception would vanish otherwise
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.get(VMS, "counter")
    assert final is not None and final.value.restarts == writers * increments


def test_update_gives_up_with_a_clear_error_when_it_always_loses(store: Store) -> None:
    store.create(VMS, "vm1", a_vm())
    calls = 0

    def change_while_someone_else_writes(vm: VM) -> VM:
        nonlocal calls
        calls += 1
        # Another writer gets in between every read and write.
        store.update(VMS, "vm1", lambda other: other.evolve(restarts=other.restarts + 1))
        return vm.evolve(error="mine")

    with pytest.raises(Conflict, match=f"gave up updating /v1/vm/vm1 after {store.settings.cas_attempts} attempts"):
        store.update(VMS, "vm1", change_while_someone_else_writes)
    assert calls == store.settings.cas_attempts
    final = store.get(VMS, "vm1")
    assert final is not None and final.value.error == "" and final.value.restarts == calls


def test_update_of_a_missing_key_and_a_no_op_update(store: Store) -> None:
    with pytest.raises(NotFound):
        store.update(VMS, "ghost", lambda vm: vm)
    created = store.create(VMS, "vm1", a_vm())
    assert store.update(VMS, "vm1", lambda vm: None).mod_revision == created.mod_revision


def test_a_guarded_write_fails_once_the_guard_key_is_recreated(store: Store) -> None:
    store.client.put("/v1/leader/test", "me")
    _, meta = store.client.get("/v1/leader/test")
    guard = Guard("/v1/leader/test", meta.create_revision)
    created = store.create(VMS, "vm1", a_vm(), guard=guard)
    store.client.delete("/v1/leader/test")
    store.client.put("/v1/leader/test", "someone else")
    with pytest.raises(GuardFailed):
        store.replace(VMS, "vm1", a_vm().evolve(error="x"), created.mod_revision, guard=guard)
    with pytest.raises(GuardFailed):
        store.create(VMS, "vm2", a_vm("vm2"), guard=guard)
    with pytest.raises(GuardFailed):
        store.delete(VMS, "vm1", guard=guard)
    assert store.get(VMS, "vm2") is None and store.get(VMS, "vm1") is not None


def test_garbage_under_the_vm_prefix_is_skipped_with_a_log_line(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.create(VMS, "good", a_vm("good"))
    store.client.put("/v1/vm/garbage", b"{not json")
    store.client.put("/v1/vm/misfit", b'{"uuid": "misfit"}')
    store.client.put("/v1/vm/nested/deeper", VMS.encode(a_vm()))
    with caplog.at_level(logging.WARNING):
        listing = store.list(VMS)
    assert list(listing.items) == ["good"]
    logged = caplog.text
    for key in ("/v1/vm/garbage", "/v1/vm/misfit", "/v1/vm/nested/deeper"):
        assert f"skipping invalid record {key}" in logged
    with pytest.raises(InvalidRecord, match="/v1/vm/garbage: not JSON"):
        store.get(VMS, "garbage")


def test_transact_writes_all_or_nothing(store: Store) -> None:
    from ucloud_common.store import Put, Remove

    one = store.create(VMS, "one", a_vm("one"))
    store.transact([Put(VMS, "two", a_vm("two"), 0), Put(VMS, "one", a_vm("one").evolve(restarts=1), one.mod_revision)])
    with pytest.raises(Conflict, match="/v1/vm/two already exists"):
        store.transact([Put(VMS, "three", a_vm("three"), 0), Put(VMS, "two", a_vm("two"), 0)])
    assert store.get(VMS, "three") is None
    with pytest.raises(Conflict, match=f"/v1/vm/one changed since revision {one.mod_revision}"):
        store.transact([Remove(VMS, "two", None), Remove(VMS, "one", one.mod_revision)])
    assert store.get(VMS, "two") is not None
    store.transact([Remove(VMS, "two", None), Remove(VMS, "one", None)])
    assert store.list(VMS).items == {}


def test_a_listing_larger_than_a_grpc_message_is_read_in_pages_at_one_revision(store: Store) -> None:
    big = "x" * 5000  # 1,200 records of ≈5 KB: ≈6 MB, more than one gRPC message may carry
    puts = [store.client.transactions.put(VMS.key(f"vm{i:04}"), VMS.encode(a_vm(f"vm{i:04}").evolve(error=big)))
            for i in range(1200)]
    for i in range(0, len(puts), 100):
        store.client.transaction(compare=[], success=puts[i:i + 100], failure=[])
    listing = store.list(VMS)
    assert len(listing.items) == 1200 and listing.revision == store.revision()
    assert all(v.mod_revision <= listing.revision for v in listing.items.values())
