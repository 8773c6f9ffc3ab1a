"""Networks, SSH keys, files, images, hosts and users through the API."""

from __future__ import annotations

import base64
import ipaddress
import subprocess

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flask import Flask

from tests.api.conftest import As, seen, set_status
from ucloud_api.schemas import MAX_VM_KEYS
from ucloud_common.cidata import MAX_USER_DATA, hostname_for, seed_files
from ucloud_common.claim import MACS, VXLAN_IDS
from ucloud_common.file import FILES, File
from ucloud_common.image import IMAGES
from ucloud_common.host import HOSTS, HOSTS_ALIVE, Host, HostAlive
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.sshkey import MAX_KEY_LINE
from ucloud_common.store import Conflict, Put, Store, Unchanged
from ucloud_common.user import USERS
from ucloud_common.vm import NIC, VM, VMS

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


def test_network_lifecycle(alice: As, store: Store) -> None:
    created = alice.post("/api/v1/networks", json={"name": "net1", "ipv6_prefix": "2001:db8:1::/64"})
    assert created.status_code == 201, created.json
    net = created.json
    assert 1 <= net["vxlan_id"] < 2**24 and net["ipv6_prefix"] == "2001:db8:1::/64"
    assert store.get(VXLAN_IDS, str(net["vxlan_id"])) is not None
    vm = alice.create_vm()
    attached = alice.post(f"/api/v1/networks/{net['uuid']}/attach", json={"vm": vm["uuid"]})
    assert attached.status_code == 202
    (nic,) = attached.json["networks"]
    assert nic["network"] == net["uuid"] and nic["mac"].startswith("02:")
    assert store.get(MACS, nic["mac"].replace(":", "-")) is not None
    assert alice.post(f"/api/v1/networks/{net['uuid']}/attach", json={"vm": vm["uuid"]}).status_code == 409
    busy = alice.delete(f"/api/v1/networks/{net['uuid']}")
    assert busy.status_code == 409 and "detach it first" in busy.json["error"]["message"]
    detached = alice.post(f"/api/v1/networks/{net['uuid']}/detach", json={"vm": vm["uuid"]})
    assert detached.status_code == 202 and detached.json["networks"] == []
    assert store.get(MACS, nic["mac"].replace(":", "-")) is None
    assert alice.delete(f"/api/v1/networks/{net['uuid']}").status_code == 204
    assert store.get(VXLAN_IDS, str(net["vxlan_id"])) is None
    assert alice.get(f"/api/v1/networks/{net['uuid']}").status_code == 404


def test_a_network_gets_a_64_of_its_own_and_each_nic_its_slaac_address(alice: As, store: Store) -> None:
    from ucloud_common.claim import IPV6_PREFIXES, prefix_claim
    from ucloud_common.ipv6 import slaac_address

    given = alice.post("/api/v1/networks", json={"name": "given", "ipv6_prefix": "2001:db8:7::/64"}).json
    taken = alice.post("/api/v1/networks", json={"name": "again", "ipv6_prefix": "2001:db8:7::/64"})
    assert taken.status_code == 409 and "2001:db8:7::/64" in taken.json["error"]["message"]
    drawn = [alice.post("/api/v1/networks", json={"name": f"auto{i}"}).json for i in range(5)]
    prefixes = [n["ipv6_prefix"] for n in drawn]
    assert len(set(prefixes)) == 5
    assert all(ipaddress.IPv6Network(p).subnet_of(ipaddress.IPv6Network(store.settings.ipv6_pool)) for p in prefixes)
    assert all(store.get(IPV6_PREFIXES, prefix_claim(p)) is not None for p in [*prefixes, given["ipv6_prefix"]])
    vm = alice.create_vm()
    alice.post(f"/api/v1/networks/{given['uuid']}/attach", json={"vm": vm["uuid"]})
    (nic,) = alice.get(f"/api/v1/vms/{vm['uuid']}").json["networks"]
    assert nic["ipv6"] == slaac_address("2001:db8:7::/64", nic["mac"])
    (listed,) = [v for v in alice.get("/api/v1/vms").json if v["uuid"] == vm["uuid"]]
    assert listed["networks"][0]["ipv6"] == nic["ipv6"]
    alice.post(f"/api/v1/networks/{given['uuid']}/detach", json={"vm": vm["uuid"]})
    assert alice.delete(f"/api/v1/networks/{given['uuid']}").status_code == 204
    assert store.get(IPV6_PREFIXES, prefix_claim("2001:db8:7::/64")) is None
    again = alice.post("/api/v1/networks", json={"name": "again", "ipv6_prefix": "2001:db8:7::/64"})
    assert again.status_code == 201  # free again


def test_a_deleted_vm_does_not_keep_a_network_busy(alice: As, store: Store) -> None:
    net = alice.post("/api/v1/networks", json={"name": "net1"}).json
    vm = alice.create_vm()
    alice.post(f"/api/v1/networks/{net['uuid']}/attach", json={"vm": vm["uuid"]})
    store.delete(VMS, vm["uuid"])  # the agent finished deleting it
    assert alice.delete(f"/api/v1/networks/{net['uuid']}").status_code == 204


def test_concurrent_network_creation_allocates_distinct_vxlan_ids_and_macs(app: Flask, alice: As, store: Store) -> None:
    ids: list[int] = []

    def create(i: int) -> None:
        response = app.test_client().post("/api/v1/networks", json={"name": f"n{i}"},
                                          headers={"Authorization": f"Bearer {alice.token}"})
        assert response.status_code == 201
        ids.append(response.json["vxlan_id"])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 12
    assert len(store.list(VXLAN_IDS).items) == 12


def test_bad_networks(alice: As) -> None:
    for body, field in [({"name": "x", "ipv6_prefix": "2001:db8::/48"}, "ipv6_prefix"),
                        ({"name": "x", "ipv6_prefix": "10.0.0.0/24"}, "ipv6_prefix"),
                        ({"name": "x", "type": "vlan"}, "type"), ({"name": "a/b"}, "name")]:
        response = alice.post("/api/v1/networks", json=body)
        assert response.status_code == 422 and response.json["error"]["fields"][0]["field"] == field


def test_ssh_keys(alice: As) -> None:
    assert alice.post("/api/v1/ssh-keys", json={"name": "laptop", "key": ED25519}).status_code == 201
    assert alice.post("/api/v1/ssh-keys", json={"name": "laptop", "key": ED25519}).status_code == 409
    assert alice.get("/api/v1/ssh-keys").json == [{"name": "laptop", "key": ED25519}]
    vm = alice.create_vm(ssh_keys=["laptop"])
    assert vm["ssh_keys"] == [ED25519]
    unknown = alice.post("/api/v1/vms", json={"name": "x", "specs": {"cpu": 1, "ram": 1, "ssd": 1},
                                              "image": "tiny", "ssh_keys": ["nope"]})
    assert unknown.status_code == 422
    assert alice.delete("/api/v1/ssh-keys/laptop").status_code == 204
    assert alice.delete("/api/v1/ssh-keys/laptop").status_code == 404
    assert alice.get("/api/v1/ssh-keys").json == []


def test_the_largest_vm_the_api_accepts_has_a_cloud_init_drive_that_fits() -> None:
    """The caps on keys (their number per VM, their length) keep every VM's seed under the agent's
    64 KiB limit, so no VM is accepted that its agent could not start."""
    key = f"{ED25519} " + "x" * (MAX_KEY_LINE - len(ED25519) - 1)
    nics = tuple(NIC(network=f"n{i}", mac=f"02:00:00:00:00:{i:02x}") for i in range(8))
    vm = VM(uuid="u" * 36, owner="alice", name="a" * 63, specs=Specs(cpu=1, ram=1, ssd=1), image="tiny",
            ssh_keys=(key,) * MAX_VM_KEYS, networks=nics)
    user_data = seed_files(vm, hostname_for(vm.name), nics)["user-data"]
    assert MAX_VM_KEYS * MAX_KEY_LINE < len(user_data) <= MAX_USER_DATA
def key_line(kind: str, *fields: bytes) -> str:
    blob = b"".join(len(f).to_bytes(4, "big") + f for f in (kind.encode(), *fields))
    return f"{kind} {base64.b64encode(blob).decode()}"


def keys_without_real_material() -> list[str]:
    """Each was accepted: the check only compared the blob's first string with the key's type."""
    point = bytes([4]) + bytes(64)  # (0, 0) is not on P-256
    return [key_line("ssh-ed25519"), key_line("ssh-ed25519", bytes(31)), key_line("ssh-ed25519", bytes(32), b"x"),
            key_line("ssh-rsa", b"\x01\x00\x01", b"\x00" + bytes([0xff]) * 64),  # a 512-bit modulus
            key_line("ssh-rsa", b"\x02", b"\x00" + bytes([0xff]) * 256),  # an even exponent
            key_line("ecdsa-sha2-nistp256", b"nistp256", point),
            key_line("ecdsa-sha2-nistp256", b"nistp384", point),
            key_line("sk-ssh-ed25519@openssh.com", bytes(32), b"web:x")]


def test_real_keys_of_every_kind_are_accepted(alice: As, tmp_path: Path) -> None:
    for kind, bits in [("rsa", "1024"), ("rsa", "3072"), ("ecdsa", "256"), ("ecdsa", "384"), ("ecdsa", "521"),
                       ("ed25519", "256")]:
        path = tmp_path / f"{kind}{bits}"
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", kind, "-b", bits, "-C", "me@host", "-f", str(path)],
                       check=True)
        key = path.with_suffix(".pub").read_text().strip()
        response = alice.post("/api/v1/ssh-keys", json={"name": path.name, "key": key})
        assert response.status_code == 201 and response.json["key"] == key, response.json


def test_bad_ssh_keys(alice: As) -> None:
    for key in ["", "ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3M=", "ssh-ed25519 !!!notbase64",
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
                ED25519 + "\x07bell", *keys_without_real_material()]:
        response = alice.post("/api/v1/ssh-keys", json={"name": "k", "key": key})
        assert response.status_code == 422, key
        assert response.json["error"]["fields"][0]["field"] == "key"


def test_files_and_images(alice: As, bob: As, admin: As, store: Store) -> None:
    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="disk.qcow2", size=10,
                                   sha512="0" * 128, mtime=datetime.now(UTC)))
    assert [f["uuid"] for f in alice.get("/api/v1/files", headers=seen(store)).json] == ["f1"]
    assert bob.get("/api/v1/files", headers=seen(store)).json == []
    created = alice.post("/api/v1/images", json={"name": "mine", "file": "f1", "store": "local"})
    assert created.status_code == 201 and created.json["status"] == "TO_BE_CREATED"
    image = created.json["uuid"]
    assert bob.post("/api/v1/images", json={"name": "stolen", "file": "f1", "store": "local"}).status_code == 422
    assert alice.post("/api/v1/images", json={"name": "x", "file": "f1", "store": "mars"}).status_code == 422
    assert alice.post("/api/v1/images", json={"name": "p", "file": "f1", "store": "local",
                                              "public": True}).status_code == 403
    assert {i["uuid"] for i in alice.get("/api/v1/images").json} == {image, "tiny"}
    assert {i["uuid"] for i in bob.get("/api/v1/images").json} == {"tiny"}
    assert bob.get(f"/api/v1/images/{image}").status_code == 404
    assert bob.delete(f"/api/v1/images/{image}").status_code == 404
    assert alice.delete(f"/api/v1/images/{image}").status_code == 204
    used = admin.delete("/api/v1/images/tiny")
    assert used.status_code == 204  # no VM uses it
    alice.post("/api/v1/images", json={"name": "mine", "file": "f1", "store": "local"})  # name free again


def test_an_image_in_use_is_not_deleted(alice: As, admin: As) -> None:
    alice.create_vm()
    response = admin.delete("/api/v1/images/tiny")
    assert response.status_code == 409 and "delete the VM first" in response.json["error"]["message"]


def test_a_vm_whose_creation_read_the_image_before_its_deletion_is_not_made(
        alice: As, admin: As, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deletion looked for VMs based on the image, found none, and removed it, while a creation
    that had read the image went on to make a VM of it: the creation now compares the image's
    revision, and the deletion marks it first."""
    read_before = store.get(IMAGES, "tiny")
    assert admin.delete("/api/v1/images/tiny").status_code == 204
    real_get = Store.get
    stale = {"reads": 0}

    def get(self: Store, family: Any, name: str) -> Any:
        if family is IMAGES and name == "tiny" and stale["reads"] == 0:
            stale["reads"] += 1
            return read_before  # the creation's read, made before the deletion
        return real_get(self, family, name)

    monkeypatch.setattr(Store, "get", get)
    refused = alice.post("/api/v1/vms", json={"name": "late", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                               "image": "tiny"})
    assert refused.status_code == 422 and refused.json["error"]["fields"][0]["field"] == "image"
    monkeypatch.setattr(Store, "get", real_get)
    assert store.list(VMS).items == {}


def test_an_image_is_marked_before_its_vms_are_looked_for_and_unmarked_if_one_is_found(
        alice: As, admin: As, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM created between the deletion's look and its removal compared an unmarked image, and was
    made of a deleted one; now that look comes after the mark, which such a creation fails on."""
    real_list = Store.list
    seen_marked = []

    def list_(self: Store, family: Any, *args: Any, **kwargs: Any) -> Any:
        if family is VMS:
            image = real_get_image()
            seen_marked.append(image.value.deleting)
            # A creation that read the image before the mark comes in now: its comparison fails.
            with pytest.raises(Conflict):
                store.transact([Put(VMS, "racer", VM(uuid="racer", owner="alice", name="racer",
                                                     specs=Specs(cpu=1, ram=1, ssd=10), image="tiny"), 0),
                                Unchanged(IMAGES, "tiny", before.mod_revision)])
        return real_list(self, family, *args, **kwargs)

    def real_get_image() -> Any:
        found = store.get(IMAGES, "tiny")
        assert found is not None
        return found

    before = real_get_image()
    alice.create_vm()
    monkeypatch.setattr(Store, "list", list_)
    assert admin.delete("/api/v1/images/tiny").status_code == 409
    assert seen_marked == [True]
    monkeypatch.setattr(Store, "list", real_list)
    assert real_get_image().value.deleting is False  # unmarked: the VM based on it stays
    assert alice.post("/api/v1/vms", json={"name": "again", "specs": {"cpu": 1, "ram": 1, "ssd": 10},
                                            "image": "tiny"}).status_code == 201


def test_hosts(admin: As, alice: As, store: Store) -> None:
    store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100)))
    store.create(HOSTS, "h2", Host(name="h2", capacity=Specs(cpu=8, ram=32, ssd=100)))
    lease = store.grant_lease(30)
    store.create(HOSTS_ALIVE, "h1", HostAlive(agent_id="a"), lease=lease)
    vm = alice.create_vm()
    set_status(store, vm["uuid"], Status.RUNNING, hostname=HOSTS.key("h1"))
    hosts = {h["name"]: h for h in admin.get("/api/v1/hosts", headers=seen(store)).json}
    assert hosts["h1"]["alive"] and not hosts["h2"]["alive"]
    assert hosts["h1"]["allocated"] == {"cpu": 1, "ram": 1.0, "ssd": 10, "hdd": 0}
    assert hosts["h2"]["allocated"]["cpu"] == 0
    assert alice.get("/api/v1/hosts").status_code == 403
    on = admin.post("/api/v1/hosts/h2/maintenance", json={"on": True})
    assert on.status_code == 200 and on.json["maintenance"] is True
    assert admin.post("/api/v1/hosts/h9/maintenance", json={"on": True}).status_code == 404
    assert admin.post("/api/v1/hosts/h2/maintenance", json={"on": "yes please"}).status_code == 422
    assert admin.post("/api/v1/hosts/h2/maintenance", json={"on": False, "drain": True}).status_code == 422
    drain = admin.post("/api/v1/hosts/h1/maintenance", json={"on": True, "drain": True})
    assert drain.status_code == 200 and drain.json["drain"] is True and drain.json["vms"] == 1

    # A host is forgotten only once it holds no VM, and is DOWN or in maintenance.
    held = admin.delete("/api/v1/hosts/h1")
    assert held.status_code == 409 and "still holds 1 VMs: drain it first" in held.json["error"]["message"]
    store.create(HOSTS, "h3", Host(name="h3", capacity=Specs(cpu=8, ram=32, ssd=100)))
    in_service = admin.delete("/api/v1/hosts/h3")
    assert in_service.status_code == 409 and "in service" in in_service.json["error"]["message"]
    assert alice.delete("/api/v1/hosts/h2").status_code == 403
    assert admin.delete("/api/v1/hosts/h2").status_code == 204 and store.get(HOSTS, "h2") is None
    assert admin.delete("/api/v1/hosts/h2").status_code == 404
    store.revoke_lease(lease)


def test_users(admin: As, alice: As, client) -> None:  # type: ignore[no-untyped-def]
    created = admin.post("/api/v1/users", json={"name": "carol"})
    assert created.status_code == 201 and created.json["role"] == "user"
    token = created.json["token"]
    carol = As(client, token, "carol")
    assert carol.get("/api/v1/vms").status_code == 200
    assert admin.post("/api/v1/users", json={"name": "carol"}).status_code == 409
    assert alice.post("/api/v1/users", json={"name": "eve"}).status_code == 403
    assert {u["name"] for u in admin.get("/api/v1/users").json} == {"admin", "alice", "carol"}
    assert "token" not in admin.get("/api/v1/users/carol").json
    assert admin.delete("/api/v1/users/carol").status_code == 204
    assert admin.get("/api/v1/users/carol").status_code == 404


def test_a_deleted_users_token_stops_working(admin: As, client) -> None:  # type: ignore[no-untyped-def]
    token = admin.post("/api/v1/users", json={"name": "dave"}).json["token"]
    dave = As(client, token, "dave")
    assert dave.get("/api/v1/vms").status_code == 200
    deleted = admin.delete("/api/v1/users/dave")
    # Refused once the worker's watch has delivered the deletion: at once with its revision.
    revision = {"X-Ucloud-Revision": deleted.headers["X-Ucloud-Revision"]}
    assert dave.get("/api/v1/vms", headers=revision).status_code == 401


def test_if_match_guards_every_write(alice: As, admin: As, store: Store) -> None:
    net = alice.post("/api/v1/networks", json={"name": "n"})
    stale = {"If-Match": net.headers["ETag"]}
    vm = alice.create_vm()
    alice.post(f"/api/v1/networks/{net.json['uuid']}/attach", json={"vm": vm["uuid"]})
    alice.post(f"/api/v1/networks/{net.json['uuid']}/detach", json={"vm": vm["uuid"]})
    assert alice.delete(f"/api/v1/networks/{net.json['uuid']}", headers=stale).status_code == 412
    vm_etag = alice.get(f"/api/v1/vms/{vm['uuid']}").headers["ETag"]
    set_status(store, vm["uuid"], Status.RUNNING)
    assert alice.post(f"/api/v1/networks/{net.json['uuid']}/attach", json={"vm": vm["uuid"]},
                      headers={"If-Match": vm_etag}).status_code == 412
    store.create(HOSTS, "h1", Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=100)))
    etag = admin.get("/api/v1/hosts/h1").headers["ETag"]
    assert admin.post("/api/v1/hosts/h1/maintenance", json={"on": True}, headers={"If-Match": etag}).status_code == 200
    assert admin.post("/api/v1/hosts/h1/maintenance", json={"on": False}, headers={"If-Match": etag}).status_code == 412
    user_etag = admin.get("/api/v1/users/alice").headers["ETag"]
    alice.post("/api/v1/ssh-keys", json={"name": "k", "key": ED25519})
    assert admin.delete("/api/v1/users/alice", headers={"If-Match": user_etag}).status_code == 412


def test_a_vm_deleted_before_its_placement_leaves_its_network(alice: As) -> None:
    """Its entry in the network's `attached` goes with it (the agent's deletion of a placed VM:
    tests/integration/test_vm_deletion.py), or the record grows with every VM the network ever had."""
    net = alice.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    vm = alice.create_vm(networks=[net])
    assert alice.delete(f"/api/v1/vms/{vm['uuid']}").status_code == 204  # never placed: gone at once
    assert alice.get(f"/api/v1/networks/{net}").json["attached"] == []


def test_networks_and_keys_at_creation(alice: As, bob: As, store: Store) -> None:
    n1 = alice.post("/api/v1/networks", json={"name": "n1"}).json["uuid"]
    n2 = alice.post("/api/v1/networks", json={"name": "n2"}).json["uuid"]
    theirs = bob.post("/api/v1/networks", json={"name": "n3"}).json["uuid"]
    alice.post("/api/v1/ssh-keys", json={"name": "laptop", "key": ED25519})
    vm = alice.create_vm(networks=[n1, n2], ssh_keys=["laptop"])
    assert [nic["network"] for nic in vm["networks"]] == [n1, n2]
    assert len({nic["mac"] for nic in vm["networks"]}) == 2
    assert [nic["slot"] for nic in vm["networks"]] == [16, 17]
    for nic in vm["networks"]:
        assert store.get(MACS, nic["mac"].replace(":", "-")) is not None
    assert alice.get(f"/api/v1/networks/{n1}").json["attached"] == [vm["uuid"]]
    assert alice.delete(f"/api/v1/networks/{n1}").status_code == 409
    # A NIC keeps its PCI slot for life (a live migration's target must rebuild the same devices):
    # one attached later takes the lowest slot free, the one a detached NIC left.
    alice.post(f"/api/v1/networks/{n1}/detach", json={"vm": vm["uuid"]})
    n4 = alice.post("/api/v1/networks", json={"name": "n4"}).json["uuid"]
    nics = alice.post(f"/api/v1/networks/{n4}/attach", json={"vm": vm["uuid"]}).json["networks"]
    assert [(nic["network"], nic["slot"]) for nic in nics] == [(n2, 17), (n4, 16)]
    for networks in ([theirs], ["../x"], [n1, n1]):
        bad = alice.post("/api/v1/vms", json={"name": "x", "specs": {"cpu": 1, "ram": 1, "ssd": 1},
                                              "image": "tiny", "networks": networks})
        assert bad.status_code == 422, networks
    assert store.get(VMS, "x") is None and len(store.list(VMS).items) == 1


def test_image_stores_are_listed(alice: As) -> None:
    assert alice.get("/api/v1/image-stores").json == [{"name": "local", "type": "local"}]


def test_a_new_user_of_a_deleted_users_name_inherits_nothing(admin: As, client, store: Store) -> None:  # type: ignore[no-untyped-def]
    """An admin deleted alice and created a new alice, who then saw and used the old one's files and images.
    (A user who owns anything is not deleted any more; what an older ucloud left behind is still found.)"""
    old = As(client, admin.post("/api/v1/users", json={"name": "alice"}).json["token"], "alice")
    store.create(FILES, "f1", File(uuid="f1", owner="alice", filename="disk.raw", size=1, sha512="0" * 128,
                                   mtime=datetime.now(UTC)))
    image = old.post("/api/v1/images", json={"name": "mine", "file": "f1", "store": "local"}).json["uuid"]
    vm = old.create_vm()["uuid"]
    net = old.post("/api/v1/networks", json={"name": "n"}).json["uuid"]
    assert old.post("/api/v1/networks", json={"name": "m"}).status_code == 201
    assert admin.delete("/api/v1/users/alice").status_code == 409
    store.delete(USERS, "alice")  # as an older ucloud deleted a user who owned things
    again = admin.post("/api/v1/users", json={"name": "alice"})
    assert again.status_code == 409 and again.json["error"]["code"] == "name_in_use"
    assert "1 VM (web1), 2 networks (m, n), 1 image (mine), 1 file (disk.raw)" in again.json["error"]["message"]
    for path in (f"/api/v1/vms/{vm}", f"/api/v1/networks/{net}", f"/api/v1/images/{image}"):
        assert admin.delete(path).status_code == 204
    for network in admin.get("/api/v1/networks").json:
        admin.delete(f"/api/v1/networks/{network['uuid']}")
    store.delete(FILES, "f1")
    new = As(client, admin.post("/api/v1/users", json={"name": "alice"}).json["token"], "alice")
    assert new.get("/api/v1/files").json == new.get("/api/v1/images").json[1:] == []


def test_a_deleted_users_kept_replies_are_not_a_new_users(admin: As, client) -> None:  # type: ignore[no-untyped-def]
    old = As(client, admin.post("/api/v1/users", json={"name": "alice"}).json["token"], "alice")
    net = old.post("/api/v1/networks", json={"name": "m"}, headers={"Idempotency-Key": "k"}).json["uuid"]
    assert admin.delete(f"/api/v1/networks/{net}").status_code == 204
    assert admin.delete("/api/v1/users/alice").status_code == 204
    new = As(client, admin.post("/api/v1/users", json={"name": "alice"}).json["token"], "alice")
    # The old alice's kept reply is not the new one's: the request is done, not replayed.
    fresh = new.post("/api/v1/networks", json={"name": "m"}, headers={"Idempotency-Key": "k"})
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers


def test_the_last_admin_cannot_be_deleted(admin: As, client, store: Store) -> None:  # type: ignore[no-untyped-def]
    refused = admin.delete("/api/v1/users/admin")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "last_admin"
    store.delete(IMAGES, "tiny")  # the fixture's image is admin's: a user who owns something is not deleted
    second = As(client, admin.post("/api/v1/users", json={"name": "root", "role": "admin"}).json["token"], "root")
    assert second.delete("/api/v1/users/admin").status_code == 204
    assert second.delete("/api/v1/users/root").status_code == 409
    assert second.get("/api/v1/users/root").status_code == 200


def test_a_new_user_name_has_no_colon(admin: As) -> None:
    response = admin.post("/api/v1/users", json={"name": "alice:x"})
    assert response.status_code == 422 and response.json["error"]["fields"][0]["field"] == "name"


def test_deleting_an_image_in_ceph_records_its_deletion_for_image_scanner(admin: As, store: Store) -> None:
    from ucloud_common.image import IMAGE_DELETIONS, IMAGES, Image, ImageStatus

    store.create(IMAGES, "in-ceph", Image(uuid="in-ceph", owner="admin", name="in-ceph", store_name="images",
                                          status=ImageStatus.CREATED))
    assert admin.delete("/api/v1/images/in-ceph").status_code == 204
    deletion = store.get(IMAGE_DELETIONS, "in-ceph")
    assert deletion is not None and deletion.value.store_name == "images"
    assert admin.delete("/api/v1/images/tiny").status_code == 204
    assert store.get(IMAGE_DELETIONS, "tiny") is None, "a local image's files go with its record (each agent)"
