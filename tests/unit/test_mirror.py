"""The mirror's table: pages in name order through a changing family, indexes kept with their
records, and never going back in time (a listing older than what it holds, a change already in it)."""

from __future__ import annotations

from ucloud_common.specs import Specs
from ucloud_common.store import Change, MemoryStore, Versioned
from ucloud_common.store.mirror import Mirror, Table
from ucloud_common.vm import VM, VMS


def vm(name: str, owner: str = "alice", revision: int = 1) -> Versioned[VM]:
    return Versioned(name, VM(uuid=name, owner=owner, name=name, specs=Specs(cpu=1, ram=1, ssd=1), image="t"),
                     revision, revision)


def table(*items: Versioned[VM], revision: int = 10) -> Table[VM]:
    made: Table[VM] = Table({"owner": lambda v: v.owner}, lambda item: item.value.name.encode())
    made.replace({i.name: i for i in items}, revision)
    return made


def test_pages_go_on_after_the_last_name_whatever_comes_and_goes() -> None:
    t = table(*(vm(f"v{i}") for i in range(1, 8)))
    first, more = t.page("", 3)
    assert [i.name for i in first] == ["v1", "v2", "v3"] and more
    t.apply(Change("v2", None, 11))  # before the page's end: shown already, or never
    t.apply(Change("v0", vm("v0", revision=12), 12))
    t.apply(Change("v4", None, 13))  # after it: gone before it was shown
    second, more = t.page(first[-1].name, 3)
    assert [i.name for i in second] == ["v5", "v6", "v7"] and not more
    assert t.page("v7", 3) == ([], False)


def test_indexes_follow_their_records() -> None:
    t = table(vm("a"), vm("b", "bob"), vm("c"))
    assert [i.name for i in t.page("", None, "owner", "alice")[0]] == ["a", "c"]
    t.apply(Change("a", vm("a", "bob", 11), 11))  # changed owner: moves between buckets
    t.apply(Change("c", None, 12))
    assert [i.name for i in t.page("", None, "owner", "bob")[0]] == ["a", "b"]
    assert t.page("", None, "owner", "alice") == ([], False)
    assert t.rendered == {"a": b"a", "b": b"b"}


def test_a_table_never_goes_back_in_time() -> None:
    t = table(vm("a"), vm("b"), revision=20)
    t.apply(Change("c", vm("c", revision=15), 15))  # already in the listing at 20 (or deleted since)
    t.replace({"a": vm("a")}, 18)  # an older listing (the follower's, behind a reader's refresh)
    assert sorted(t.items) == ["a", "b"] and t.revision == 20
    t.apply(Change("a", None, 21))
    assert sorted(t.items) == ["b"] and t.revision == 21


def test_a_listing_keeps_the_objects_of_records_unchanged_since() -> None:
    # A resync lists every record again: the table keeps what it holds of those unchanged (the
    # listing's copies die young, never reaching the collector's oldest generation), and takes the rest.
    held = vm("a")
    t = table(held, vm("b"), revision=20)
    t.replace({"a": vm("a"), "b": vm("b", "bob", 25)}, 30)
    assert t.items["a"] is held and t.items["b"].value.owner == "bob"
    assert [i.name for i in t.page("", None, "owner", "bob")[0]] == ["b"] and t.revision == 30


def test_a_table_keeps_only_the_last_records_of_each_value_it_is_told_to() -> None:
    def kept(t: Table[VM], owner: str) -> list[str]:
        return [i.name for i in t.page("", None, "owner", owner)[0]]

    t: Table[VM] = Table({"owner": lambda v: v.owner}, None, keep_last=("owner", 2))
    t.replace({n: vm(n, owner) for n, owner in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"))}, 10)
    assert kept(t, "a") == ["a2", "a3"] and kept(t, "b") == ["b1"] and sorted(t.items) == ["a2", "a3", "b1"]
    t.apply(Change("a4", vm("a4", "a", 11), 11))
    t.apply(Change("b2", vm("b2", "b", 12), 12))
    assert kept(t, "a") == ["a3", "a4"] and kept(t, "b") == ["b1", "b2"]
    assert sorted(t.items) == ["a3", "a4", "b1", "b2"] and t.page("", None)[0][0].name == "a3"


def test_every_change_of_one_transaction_is_taken_in() -> None:
    # One transaction changes several keys at one revision (the scheduler's KILLED for all the VMs
    # of a fenced host): each comes as a change of that revision, and each must land.
    t = table(vm("a"), vm("b"), vm("c"), revision=20)
    for name in ("a", "b", "c"):
        t.apply(Change(name, vm(name, "bob", 21), 21))
    assert [i.name for i in t.page("", None, "owner", "bob")[0]] == ["a", "b", "c"] and t.revision == 21


def test_a_mirror_waits_for_a_revision_and_takes_a_fresher_listing() -> None:
    store = MemoryStore()
    store.create(VMS, "a", vm("a").value)
    mirror = Mirror(store, VMS, {"owner": lambda v: v.owner}).start()
    try:
        written = store.create(VMS, "b", vm("b").value).mod_revision
        assert mirror.wait_for(written, 10)
        with mirror.locked() as t:
            assert sorted(t.items) == ["a", "b"]
        assert not mirror.wait_for(written + 100, 0)  # never fresher than it says
        mirror.refresh(store.list(VMS))
        assert mirror.table.revision >= written
    finally:
        mirror.stop()
        mirror.join(5)


def test_a_change_that_fails_to_be_taken_in_makes_the_mirror_list_again(caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A render that fails costs only the record's rendering in advance (tests/unit/test_mirror_review.py);
    # a failure of the table itself (a bug) makes the mirror list the family again.
    store = MemoryStore()
    failed = []
    real_apply = Table.apply

    def apply(self: Table[VM], change: Change[VM]) -> None:
        if change.name == "bad" and not failed:
            failed.append(change.name)
            raise ValueError("cannot take it in")
        real_apply(self, change)

    monkeypatch.setattr(Table, "apply", apply)
    mirror = Mirror(store, VMS, render=lambda item: item.name.encode()).start()
    try:
        store.create(VMS, "good", vm("good").value)
        written = store.create(VMS, "bad", vm("bad").value).mod_revision
        assert mirror.wait_for(written, 10)
        assert mirror.table.rendered == {"good": b"good", "bad": b"bad"}
        assert mirror.relisted_after_failure == 1 and "listing again" in caplog.text
    finally:
        mirror.stop()
        mirror.join(5)
