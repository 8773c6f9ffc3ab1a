"""Deleting a user who owns things: refused with what they own, or (?cascade=true) all of it deleted,
VMs through their agent (the real agent on the fake hypervisor), on a real etcd."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.api.conftest import As
from tests.helpers.cluster import wait_for
from tests.integration.conftest import agent, quick  # noqa: F401 (fixtures)
from tests.integration.test_supervision import Running
from ucloud_common.config import Settings
from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGES
from ucloud_common.network import NETWORKS
from ucloud_common.host import HOSTS, Host, HostStatus
from ucloud_common.leftover import LEFTOVERS, leftover_name
from ucloud_common.specs import Specs
from ucloud_common.states import Requested, Status
from ucloud_common.store import Store
from ucloud_common.user import PASSWORDS, TOKENS, USERS
from ucloud_common.vm import VMS, placed_on
from ucloud_vm.agent import Agent

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


def owned_by(store: Store, name: str) -> dict[str, int]:
    return {what: len(store.list(family, where={"owner": name}).items)
            for what, family in (("VMs", VMS), ("networks", NETWORKS), ("images", IMAGES), ("files", FILES))}


def give_alice_one_of_each(alice: As, store: Store) -> tuple[str, str]:
    """A placed VM on a network, another network, an image, an SSH key, an upload (registered)."""
    assert alice.put("/api/v1/files/disk.raw", data=b"disk").status_code == 201
    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="disk.raw", size=4, sha512="0" * 128,
                                   mtime=datetime.now(UTC)))  # as file-scan registers it
    assert alice.post("/api/v1/images", json={"name": "mine", "file": "f1", "store": "local"}).status_code == 201
    net = alice.post("/api/v1/networks", json={"name": "n1"}).json["uuid"]
    assert alice.post("/api/v1/networks", json={"name": "n2"}).status_code == 201
    assert alice.post("/api/v1/ssh-keys", json={"name": "laptop", "key": ED25519}).status_code == 201
    vm = alice.create_vm("web1", networks=[net])["uuid"]
    # What the scheduler writes: the VM is h1's; the agent starts it.
    store.update(VMS, vm, lambda v: v.evolve(status=Status.SCHEDULED_DEPLOY, **placed_on("h1")))
    return vm, net


def test_a_user_who_owns_things_is_not_deleted_and_is_told_what(admin: As, alice: As, store: Store,
                                                                 settings: Settings) -> None:
    """Deleting a user who owned VMs left them running, owned by nobody."""
    give_alice_one_of_each(alice, store)
    refused = admin.delete("/api/v1/users/alice")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "owns_things"
    assert "1 VM (web1), 2 networks (n1, n2), 1 image (mine), 1 file (disk.raw)" in refused.json["error"]["message"]
    assert refused.json["error"]["owns"]["networks"] == {"count": 2, "some": ["n1", "n2"]}
    assert owned_by(store, "alice") == {"VMs": 1, "networks": 2, "images": 1, "files": 1}
    assert (settings.upload_dir / "alice" / "disk.raw").exists() and store.get(USERS, "alice") is not None
    assert alice.get("/api/v1/vms").status_code == 200, "alice still works"
    assert admin.delete("/api/v1/users/alice?cascade=maybe").status_code == 400


def test_a_cascade_deletes_all_the_user_owns_and_then_the_user(admin: As, alice: As, store: Store,
                                                                settings: Settings, agent: Agent) -> None:  # noqa: F811
    running = Running(agent.run)
    try:
        vm, _ = give_alice_one_of_each(alice, store)
        wait_for(lambda: (v := store.get(VMS, vm)) is not None and v.value.status is Status.RUNNING, 15, "web1 running")
        going = admin.delete("/api/v1/users/alice?cascade=true")
        assert going.status_code == 202, going.json
        # web1 and its network n1 are left while its agent deletes it (the fake hypervisor may be that quick).
        assert set(going.json["left"]) <= {"VMs", "networks"}, going.json
        assert "files" not in going.json["left"] and not (settings.upload_dir / "alice").exists()
        assert admin.get("/api/v1/users/alice").json["deleting_since"]
        assert alice.get("/api/v1/vms").status_code == 401, "a user being deleted makes nothing new"
        assert store.get(PASSWORDS, "alice") is None
        assert not [t for t in store.list(TOKENS).items.values() if t.value.user == "alice"]
        assert admin.post("/api/v1/users", json={"name": "alice"}).status_code == 409

        def gone() -> bool:
            again = admin.delete("/api/v1/users/alice?cascade=true")
            assert again.status_code in (202, 204), again.json
            return again.status_code == 204
        wait_for(gone, 30, "alice deleted")
    finally:
        running.end()
    assert store.get(USERS, "alice") is None and admin.get("/api/v1/users/alice").status_code == 404
    assert owned_by(store, "alice") == {"VMs": 0, "networks": 0, "images": 0, "files": 0}
    asked = [e["message"] for e in admin.get(f"/api/v1/events?object=vm:{vm}").json]
    assert "delete (its owner alice is being deleted)" in asked, "through the normal path: its agent cleans up"
    events = [e["message"] for e in admin.get("/api/v1/events?object=user:alice").json]
    assert "delete user alice with all it owns" in events and "user alice deleted: nothing of theirs is left" in events
    assert admin.post("/api/v1/users", json={"name": "alice"}).status_code == 201, "the name is free again"
    assert (settings.upload_dir / "alice").is_dir()


def test_the_last_admin_is_not_deleted_by_a_cascade_either(admin: As) -> None:
    refused = admin.delete("/api/v1/users/admin?cascade=true")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "last_admin"


def test_an_unused_folder_left_by_hand_does_not_stop_a_plain_deletion(admin: As, settings: Settings) -> None:
    assert admin.post("/api/v1/users", json={"name": "carol"}).status_code == 201
    (settings.upload_dir / "carol" / "notes.txt").write_text("kept by an operator")
    refused = admin.delete("/api/v1/users/carol")
    assert refused.status_code == 409 and "1 file (notes.txt)" in refused.json["error"]["message"]
    assert (settings.upload_dir / "carol" / "notes.txt").exists()
    (settings.upload_dir / "carol" / "notes.txt").unlink()
    assert admin.delete("/api/v1/users/carol").status_code == 204
    assert not Path(settings.upload_dir / "carol").exists()


def test_a_cascade_is_not_held_by_a_vm_on_a_host_that_is_down(admin: As, alice: As, store: Store) -> None:
    """Its VM, asked deleted before its host went down, was skipped by every sweep: "its agent is at
    it" — an agent that may never come back. Such a VM is now deleted at once."""
    store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100), status=HostStatus.DOWN))
    vm = alice.create_vm()["uuid"]
    store.update(VMS, vm, lambda v: v.evolve(status=Status.KILLED, hostname=HOSTS.key("h1"),
                                             requested=Requested.DELETED))
    assert admin.delete("/api/v1/users/alice?cascade=true").status_code == 202
    assert store.get(VMS, vm) is None and store.get(LEFTOVERS, leftover_name("h1", vm)) is not None

    def gone() -> bool:
        return admin.delete("/api/v1/users/alice?cascade=true").status_code == 204
    wait_for(gone, 30, "alice deleted")
