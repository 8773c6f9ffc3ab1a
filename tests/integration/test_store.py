"""The store's contract on a real etcd and on MemoryStore: typed access, compare-and-swap, guards,
revisions, transactions, garbage."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from tests.integration.test_follow import compact
from ucloud_common.record import InvalidRecord
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import (
    AbstractStore,
    AlreadyExists,
    Compacted,
    Conflict,
    Guard,
    GuardFailed,
    LeaseExpired,
    NotFound,
    Put,
    Remove,
    StoreRefused,
    TooLarge,
    Unchanged,
)
from ucloud_common.store.mirror import Mirror
from ucloud_common.vm import VM, VMS


@pytest.fixture
def store(any_store: AbstractStore) -> AbstractStore:
    return any_store


def a_vm(uuid: str = "vm1") -> VM:
    return VM(uuid=uuid, owner="alice", name=uuid, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny")


def test_create_get_list_delete(store: AbstractStore) -> None:
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


def test_pages_go_through_a_family_in_name_order_past_keys_that_are_no_records(store: AbstractStore) -> None:
    for name in ("a", "b", "d", "e", "f"):
        store.create(VMS, name, a_vm(name).evolve(owner="bob" if name == "e" else "alice"))
    store.create_key("/v1/vm/c\nd", "{not json", store.grant_lease(60))  # no record, and no name either
    seen, after, pages = [], "", 0
    while True:
        page, after = store.page(VMS, after=after, limit=2, where={"owner": "alice"})
        seen += [item.name for item in page]
        pages += 1
        if not after:
            break
    assert seen == ["a", "b", "d", "f"] and pages == 3  # [a b] [c\nd d] [e f]: e is bob's, skipped
    assert [i.name for i in store.page(VMS, within="d", limit=10)[0]] == ["d"]
    assert store.page(VMS, after="f") == ([], "")


def test_replace_is_a_compare_and_swap(store: AbstractStore) -> None:
    first = store.create(VMS, "vm1", a_vm())
    second = store.replace(VMS, "vm1", first.value.evolve(status=Status.SCHEDULED_DEPLOY), first.mod_revision)
    assert second.mod_revision > first.mod_revision and second.create_revision == first.create_revision
    with pytest.raises(Conflict, match="changed since"):
        store.replace(VMS, "vm1", first.value.evolve(status=Status.ERROR), first.mod_revision)
    with pytest.raises(Conflict):
        store.delete(VMS, "vm1", mod_revision=first.mod_revision)
    got = store.get(VMS, "vm1")
    assert got is not None and got.value.status is Status.SCHEDULED_DEPLOY


def test_twenty_concurrent_writers_lose_no_update(store: AbstractStore,
                                                   connect: Callable[[], AbstractStore]) -> None:
    store.create(VMS, "counter", a_vm("counter"))
    writers, increments = 20, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(own: AbstractStore) -> None:
        try:
            barrier.wait()
            for _ in range(increments):
                own.update(VMS, "counter", lambda vm: vm.evolve(restarts=vm.restarts + 1))
        except BaseException as exc:  # reported below; a thread's exception would vanish otherwise
            errors.append(exc)

    # one connection per writer, as separate processes would have
    threads = [threading.Thread(target=write, args=(connect(),)) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.get(VMS, "counter")
    assert final is not None and final.value.restarts == writers * increments


def test_update_gives_up_with_a_clear_error_when_it_always_loses(store: AbstractStore) -> None:
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


def test_update_of_a_missing_key_and_a_no_op_update(store: AbstractStore) -> None:
    with pytest.raises(NotFound):
        store.update(VMS, "ghost", lambda vm: vm)
    created = store.create(VMS, "vm1", a_vm())
    assert store.update(VMS, "vm1", lambda vm: None).mod_revision == created.mod_revision


def test_a_guarded_write_fails_once_the_guard_key_is_recreated(store: AbstractStore) -> None:
    mine = store.grant_lease(60)
    _, revision, _ = store.create_key("/v1/leader/test", "me", mine)
    guard = Guard("/v1/leader/test", revision)
    created = store.create(VMS, "vm1", a_vm(), guard=guard)
    store.revoke_lease(mine)
    store.create_key("/v1/leader/test", "someone else", store.grant_lease(60))
    with pytest.raises(GuardFailed):
        store.replace(VMS, "vm1", a_vm().evolve(error="x"), created.mod_revision, guard=guard)
    with pytest.raises(GuardFailed):
        store.create(VMS, "vm2", a_vm("vm2"), guard=guard)
    with pytest.raises(GuardFailed):
        store.delete(VMS, "vm1", guard=guard)
    with pytest.raises(GuardFailed):  # a failed guard is reported before a lost compare-and-swap
        store.transact([Put(VMS, "vm1", a_vm(), 0)], guard=guard)
    assert store.get(VMS, "vm2") is None and store.get(VMS, "vm1") is not None


def test_garbage_under_the_vm_prefix_is_skipped_with_a_log_line(
        store: AbstractStore, caplog: pytest.LogCaptureFixture) -> None:
    store.create(VMS, "good", a_vm("good"))
    lease = store.grant_lease(60)
    store.create_key("/v1/vm/garbage", "{not json", lease)
    store.create_key("/v1/vm/misfit", '{"uuid": "misfit"}', lease)
    store.create_key("/v1/vm/nested/deeper", VMS.encode(a_vm()).decode(), lease)
    # The key is the identity: a record stored under one key that names another VM is not that VM
    # (an agent acting on it deleted the VM it named: its key, disk and QEMU).
    store.create_key("/v1/vm/impostor", VMS.encode(a_vm("good")).decode(), lease)
    with caplog.at_level(logging.WARNING):
        listing = store.list(VMS)
    assert list(listing.items) == ["good"]
    logged = caplog.text
    # A key that is no name is quoted: it may hold a newline or a terminal escape.
    for key in ("/v1/vm/garbage", "/v1/vm/misfit", "'/v1/vm/nested/deeper'", "/v1/vm/impostor"):
        assert f"skipping invalid record {key}" in logged
    with pytest.raises(InvalidRecord, match="/v1/vm/garbage: not JSON"):
        store.get(VMS, "garbage")
    with pytest.raises(InvalidRecord, match="its uuid 'good' is not its key's 'impostor'"):
        store.get(VMS, "impostor")


def test_transact_writes_all_or_nothing(store: AbstractStore) -> None:
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


def test_a_listing_larger_than_a_grpc_message_is_read_in_pages_at_one_revision(store: AbstractStore) -> None:
    big = "x" * 5000  # 1,200 records of ≈5 KB: ≈6 MB, more than one gRPC message may carry
    puts: list[Put[VM] | Remove[VM]] = [Put(VMS, f"vm{i:04}", a_vm(f"vm{i:04}").evolve(error=big), None)
                                        for i in range(1200)]
    for i in range(0, len(puts), 100):
        store.transact(puts[i:i + 100])
    listing = store.list(VMS)
    assert len(listing.items) == 1200 and listing.revision == store.revision()
    assert all(v.mod_revision <= listing.revision for v in listing.items.values())


def test_one_revision_per_transaction_and_none_for_a_change_of_nothing(store: AbstractStore) -> None:
    start = store.revision()
    revision = store.transact([Put(VMS, name, a_vm(name), 0) for name in ("a", "b", "c")])
    assert revision == start + 1 == store.revision()
    listing = store.list(VMS)
    assert {v.mod_revision for v in listing.items.values()} == {revision} == {v.create_revision for v in
                                                                             listing.items.values()}
    updated = store.update(VMS, "a", lambda vm: vm.evolve(restarts=1))
    assert (updated.mod_revision, updated.create_revision) == (revision + 1, revision)
    assert store.delete(VMS, "ghost") is False and store.revision() == revision + 1
    with pytest.raises(Conflict):
        store.transact([Put(VMS, "d", a_vm("d"), 0), Put(VMS, "a", a_vm("a"), 0)])
    assert store.revision() == revision + 1 and store.get(VMS, "d") is None
    assert store.delete_all(VMS, "b") == 1 and store.revision() == revision + 2


def test_replace_at_revision_zero_means_the_key_must_be_absent(store: AbstractStore) -> None:
    """As in etcd, an absent key is at mod_revision 0: replacing "at 0" creates, once."""
    created = store.replace(VMS, "vm1", a_vm(), 0)
    assert created.create_revision == created.mod_revision == store.revision()
    with pytest.raises(Conflict):
        store.replace(VMS, "vm1", a_vm(), 0)


def test_transactions_etcd_refuses_are_refused(store: AbstractStore) -> None:
    with pytest.raises(StoreRefused, match="duplicate key"):
        store.transact([Put(VMS, "a", a_vm("a"), None), Put(VMS, "a", a_vm("a"), None)])
    with pytest.raises(StoreRefused, match="duplicate key"):
        store.transact([Put(VMS, "a", a_vm("a"), None), Remove(VMS, "a", None)])
    with pytest.raises(StoreRefused, match="too many operations"):
        store.transact([Put(VMS, f"vm{i}", a_vm(f"vm{i}"), 0) for i in range(129)])
    assert store.list(VMS).items == {}


@pytest.mark.parametrize("size", [1_600_000, 3_000_000])
def test_a_write_too_large_for_etcd_is_refused_as_such(store: AbstractStore, size: int) -> None:
    """Over etcd's 1.5 MiB request limit, and over gRPC's message limit (2 MiB): each was
    indistinguishable from an outage (the API answered 503 "etcd unreachable" for a user's 96th key)."""
    big = a_vm().evolve(error="x" * size)
    with pytest.raises(TooLarge, match="larger than etcd takes"):
        store.create(VMS, "big", big)
    with pytest.raises(TooLarge):
        store.transact([Put(VMS, "big", big, 0)])
    assert store.get(VMS, "big") is None


def test_count_counts_keys_by_name_prefix(store: AbstractStore) -> None:
    for name in ("a:1", "a:2", "ab:1", "b:1"):
        store.create(VMS, name, a_vm(name))
    assert store.count(VMS, "a:") == 2
    assert store.count(VMS, "c:") == 0


def test_a_family_is_unchanged_since_a_revision_until_a_key_of_it_is_made_changed_or_deleted(
        store: AbstractStore) -> None:
    from ucloud_common.image import IMAGES, Image, ImageStatus

    for name in ("a", "b"):
        store.create(VMS, name, a_vm(name))
    at = store.revision()
    store.create(IMAGES, "i", Image(uuid="i", owner="o", name="i", store_name="local", status=ImageStatus.CREATED))
    assert store.unchanged(VMS, at) == (True, store.revision())  # another family's write
    assert store.unchanged(VMS, at - 1)[0] is False  # b was made after at - 1
    store.delete(VMS, "a")
    assert store.unchanged(VMS, at)[0] is False  # a deletion leaves no newer key: the count tells
    after_delete = store.revision()
    assert store.unchanged(VMS, after_delete)[0] is True
    b = store.get(VMS, "b")
    assert b is not None
    store.replace(VMS, "b", b.value, b.mod_revision)
    assert store.unchanged(VMS, after_delete)[0] is False


def test_a_deletion_is_a_change_also_beside_a_key_that_is_no_record(store: AbstractStore) -> None:
    """A mirror skips a key that is no record, so its size is no count of the family's keys: with
    one such key, a deletion since left the family as many keys as the mirror holds."""
    store.create_key("/v1/vm/garbage", "{not json", store.grant_lease(60))
    for name in ("a", "b"):
        store.create(VMS, name, a_vm(name))
    at = store.revision()
    store.delete(VMS, "a")
    assert store.unchanged(VMS, at)[0] is False
    assert store.unchanged(VMS, store.revision())[0] is True


def test_unchanged_since_a_compacted_revision_is_compacted(store: AbstractStore) -> None:
    store.create(VMS, "a", a_vm("a"))
    at = store.revision()
    store.create(VMS, "b", a_vm("b"))
    compact(store, store.revision())
    with pytest.raises(Compacted):
        store.unchanged(VMS, at)


@pytest.mark.parametrize("skipped", ["a key that is no record", "records a table does not keep"])
def test_a_mirror_is_never_confirmed_past_a_deletion_it_has_not_seen(store: AbstractStore, skipped: str) -> None:
    """A mirror proved current by `confirm` takes etcd's present revision, and a change its watch
    delivers later at an older revision is dropped as already in it: a deletion that passed for no
    change served the deleted record (also to the caller who deleted it) until the next resync."""
    if skipped == "a key that is no record":
        store.create_key("/v1/vm/garbage", "{not json", store.grant_lease(60))
        mirror: Mirror[VM] = Mirror(store, VMS)
    else:  # the last of each owner's VMs only, as the events' mirror keeps the last of each object's
        store.create(VMS, "0", a_vm("0").evolve(owner="a"))
        mirror = Mirror(store, VMS, {"owner": lambda vm: vm.owner}, keep_last=("owner", 1))
    for name in ("a", "b"):
        store.create(VMS, name, a_vm(name).evolve(owner=name))
    mirror.refresh(store.list(VMS))  # (not started: no watch delivers the deletion meanwhile)
    assert sorted(mirror.table.items) == ["a", "b"]
    deleted = store.revision() + 1
    assert store.delete(VMS, "a")
    mirror.confirm()
    assert mirror.table.revision < deleted, "the mirror claims a revision past a deletion it still holds"


def test_a_transaction_applies_only_while_what_it_depends_on_is_unchanged(store: AbstractStore) -> None:
    base = store.create(VMS, "base", a_vm("base"))
    store.transact([Put(VMS, "made", a_vm("made"), 0), Unchanged(VMS, "base", base.mod_revision)])
    assert store.get(VMS, "made") is not None
    assert store.get(VMS, "base") == base  # compared, never written
    store.replace(VMS, "base", base.value, base.mod_revision)
    with pytest.raises(Conflict) as lost:
        store.transact([Put(VMS, "other", a_vm("other"), 0), Unchanged(VMS, "base", base.mod_revision)])
    assert lost.value.key == VMS.key("base") and store.get(VMS, "other") is None
    store.transact([Put(VMS, "alone", a_vm("alone"), 0), Unchanged(VMS, "absent", 0)])  # 0: must not exist
    with pytest.raises(Conflict):
        store.transact([Put(VMS, "never", a_vm("never"), 0), Unchanged(VMS, "alone", 0)])


def test_writes_on_a_revoked_lease_are_refused_and_its_keys_gone(store: AbstractStore) -> None:
    lease = store.grant_lease(60)
    store.create(VMS, "on-lease", a_vm("on-lease"), lease=lease)
    store.create(VMS, "moved", a_vm("moved"), lease=lease)
    moved = store.get(VMS, "moved")
    assert moved is not None
    store.replace(VMS, "moved", moved.value, moved.mod_revision)  # a put without the lease detaches it
    before = store.revision()
    store.revoke_lease(lease)
    assert store.revision() == before + 1, "a lease's keys are deleted in one revision"
    assert store.get(VMS, "on-lease") is None and store.get(VMS, "moved") is not None
    with pytest.raises(LeaseExpired):
        store.create(VMS, "late", a_vm("late"), lease=lease)
    with pytest.raises(AlreadyExists):  # a failed compare comes first: etcd checks only the leases it uses
        store.create(VMS, "moved", a_vm("moved"), lease=lease)
    assert store.refresh_lease(lease) <= 0
    store.revoke_lease(lease)  # revoking again is fine


def test_a_lease_shorter_than_etcds_minimum_is_granted_the_minimum(store: AbstractStore) -> None:
    assert store.refresh_lease(store.grant_lease(1)) == 2

