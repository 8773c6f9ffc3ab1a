"""VMs: create, list, read, delete, the actions, and each VM's event log and resource figures.

Every action is checked against the VM's actual status by `ucloud_common.states` and written with
compare-and-swap: accepted → 202 with the VM; not valid now → 409 saying why, and nothing written.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ucloud_api.audit import request_id, told
from ucloud_api.auth import current, require_admin
from ucloud_api.body import parse
from ucloud_api.cache import LAST_EVENTS, cache, compact_json, fresh, get_settled, kept_rendering, list_reply
from ucloud_api.errors import APIError
from ucloud_api.idempotency import idempotent
from ucloud_api.naming import create_named, new_nic
from ucloud_api.replies import check_if_match, created_reply, dump, if_match, lookup_own, object_reply, store
from ucloud_api.schemas import Migrate, Resize, VMCreate
from ucloud_common.allocation import SHARED_STORAGE
from ucloud_common.claim import MACS, VM_NAMES, Claim, held_by, mac_claim, vm_claims
from ucloud_common.event import Kind, object_events, ref
from ucloud_common.host import HOSTS, HostStatus
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.record import check_name, is_key_part
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.specs import Specs, described
from ucloud_common.states import Action, ActionRefused, Status
from ucloud_common.ipv6 import slaac_address
from ucloud_common.leftover import LEFTOVERS, Leftover, leftover_name
from ucloud_common import quota
from ucloud_common.quota import USAGES, change, charged
from ucloud_common.quoting import quote
from ucloud_common.network import NETWORKS, detached
from ucloud_common.store import Conflict, Put, Remove, Unchanged, Versioned, Write
from ucloud_common.user import USERS
from ucloud_common.vm import VMS, VM, request_fields
from ucloud_common.vmstats import VM_STATS

bp = Blueprint("vms", __name__, url_prefix="/api/v1/vms")

_RETRY = Backoff(initial=0.002, maximum=0.1)


@bp.post("")
@idempotent
def create() -> Response:
    caller = current()
    body = parse(VMCreate)
    _usable_image(body, caller.name)
    user_keys = _user_keys(caller.name)
    missing = [k for k in body.ssh_keys if k not in user_keys]
    if missing:
        raise APIError(422, "invalid", f"ssh_keys: you have no key named {quote(missing[0])}",
                       fields=[{"field": "ssh_keys", "message": f"unknown key {quote(missing[0])}"}])
    if len(set(body.networks)) != len(body.networks):
        raise APIError(422, "invalid", "networks: a network is listed twice",
                       fields=[{"field": "networks", "message": "listed twice"}])
    uuid = str(uuidlib.uuid4())

    def make() -> tuple[VM, list[Write]]:
        # The image as read now, unchanged until the creation: one whose deletion began meanwhile
        # (`ucloud_api.views.images.deleted`) fails the creation, which then reads it again.
        image = _usable_image(body, caller.name)
        writes: list[Write] = [Unchanged(IMAGES, image.name, image.mod_revision)]
        nics = []
        for network_uuid in body.networks:
            network = store().get(NETWORKS, network_uuid) if is_key_part(network_uuid) else None
            if network is None or network.value.owner != caller.name:
                raise APIError(422, "invalid", f"networks: you have no network {network_uuid}",
                               fields=[{"field": "networks", "message": f"no network {network_uuid}"}])
            nic = new_nic(network_uuid, tuple(nics))
            nics.append(nic)
            writes += [Put(NETWORKS, network_uuid, network.value.evolve(attached=(*network.value.attached, uuid)),
                           network.mod_revision),
                       Put(MACS, mac_claim(nic.mac), Claim(holder=uuid), 0),
                       told(Kind.NETWORK, network_uuid, f"attached VM {uuid} at its creation")]
        vm = VM(
            uuid=uuid, owner=caller.name, name=body.name, specs=body.specs.as_specs(), image=body.image,
            storage=body.storage, ssh_keys=tuple(user_keys[k] for k in body.ssh_keys),
            anti_affinity=body.anti_affinity or "", networks=tuple(nics), request_id=request_id(),
        )
        return vm, [*writes, charged(store(), caller.name, change(None, vm)),
                    told(Kind.VM, uuid, f"create VM {body.name} from image {body.image}")]

    created = create_named(VMS, VM_NAMES, caller.name, body.name, uuid, make, "VM")
    return created_reply(created, f"/api/v1/vms/{uuid}", shown_one(created.value))


def _usable_image(body: VMCreate, user: str) -> Versioned[Image]:
    """The image `body` names, or 422 if `user` may not make a VM of it (with `body.storage`)."""
    image = store().get(IMAGES, body.image)
    if image is None or image.value.status is not ImageStatus.CREATED or image.value.deleting or not (
            image.value.public or image.value.owner == user):
        raise APIError(422, "invalid", f"image: no usable image {quote(body.image)}", fields=[
            {"field": "image", "message": "no such image, or it is not CREATED, or it is being deleted"}])
    # A local disk is an overlay on a file in the host's image directory; an rbd disk is a clone in
    # Ceph: each needs its image in the matching kind of store.
    if (body.storage == "local") != (image.value.store_name == "local"):
        raise APIError(422, "invalid", f"storage: image {quote(body.image)} is in store {image.value.store_name}, which "
                       f"{body.storage} disks cannot use", fields=[{"field": "storage", "message": "does not match "
                                                                   "the image's store"}])
    return image


@bp.get("")
def list_() -> Response:
    caller = current()
    owner, host, status = (request.args.get(k) for k in ("owner", "host", "status"))
    if (owner or host) and not caller.is_admin:
        raise APIError(403, "forbidden", "only an admin filters by owner or host")
    for field, value in (("owner", owner), ("host", host)):
        if value is None:
            continue
        # An empty or impossible filter must not quietly mean "no filter" (an admin's list of all).
        try:
            check_name(value)
        except ValueError as exc:
            raise APIError(400, "bad_request", f"{field}: {exc}") from None
    if status is not None and status not in Status.__members__:
        raise APIError(400, "bad_request", f"status must be one of {', '.join(Status)}")
    # Found by the narrowest index the request names; the other filters are checked on each VM.
    index, value = (("owner", caller.name) if not caller.is_admin else ("owner", owner) if owner
                    else ("host", host) if host else ("status", status) if status else (None, ""))

    def keep(vm: VM) -> bool:
        return (caller.is_admin or vm.owner == caller.name) and (not owner or vm.owner == owner) \
            and (not host or vm.host == host) and (not status or vm.status == status)

    # Found by the one filter asked (or a user's own VMs by the owner index): nothing left to check.
    asked = [f for f in (owner, host, status) if f]
    exact = (not caller.is_admin and not asked) or (caller.is_admin and len(asked) <= 1)
    return list_reply(VMS, _listed, index, value, None if exact else keep)


def rendered(item: Versioned[VM]) -> bytes | None:
    """A VM's JSON as lists show it, made once when the cache takes it in; None for a VM with NICs,
    whose addresses come from its networks' records (`_listed`)."""
    return None if item.value.networks else compact_json(shown(item.value, {}))


def _listed(item: Versioned[VM]) -> bytes:
    """A VM the cache did not render (one with NICs), as lists show it."""
    return compact_json(shown_one(item.value))


@bp.get("/<uuid>")
def get(uuid: str) -> Response:
    vm = lookup_own(VMS, uuid, f"VM {uuid}", cached=True)
    # As `object_reply` would answer `{**shown_one(vm), "events": …}`, from the VM's JSON the cache
    # made once (the same as its lists show): a VM read from the cache is not dumped again.
    shown_json = kept_rendering(VMS, vm) or compact_json(shown_one(vm.value))
    events = compact_json(_events(uuid, cached=True, last=LAST_EVENTS))
    return object_reply(vm, body=shown_json[:-1] + b',"events":' + events + b"}")


def shown(vm: VM, prefixes: dict[str, str]) -> dict[str, Any]:
    """A VM as the API shows it: its record, and each NIC's IPv6 address — the one its guest takes
    by SLAAC from its MAC on its network's /64 (`prefixes`, by network), so no guest is asked — and
    why its host could not give it the NIC, if so. Never its TCP VNC server, which holds a password
    (GET /vms/<uuid>/guacamole answers it)."""
    body = dump(vm)
    del body["guacamole"]
    for nic in body["networks"]:
        prefix = prefixes.get(nic["network"], "")
        nic["ipv6"] = slaac_address(prefix, nic["mac"]) if prefix else None
        nic["error"] = vm.nic_errors.get(nic["mac"], "")
    return body


def shown_one(vm: VM) -> dict[str, Any]:
    """`shown`, reading only this VM's networks: every answer that is a VM looks the same. A network's
    prefix never changes, and a network is never deleted while a VM is attached: the cache's copy is
    as good as etcd's, whatever its revision (`get_settled`: a caller's write to a VM, which the
    networks' mirror never passes, once cost a round trip per VM of a list)."""
    networks = (get_settled(NETWORKS, nic.network, lambda n=nic.network: store().get(NETWORKS, n))
                for nic in vm.networks)
    return shown(vm, {n.name: n.value.ipv6_prefix for n in networks if n is not None})


@bp.get("/<uuid>/events")
def events(uuid: str) -> Response:
    lookup_own(VMS, uuid, f"VM {uuid}")
    return jsonify(_events(uuid))


@bp.get("/<uuid>/stats")
def stats(uuid: str) -> Response:
    """The VM's resource figures as its host's agent last published them (every vm_stats_interval)."""
    vm = lookup_own(VMS, uuid, f"VM {uuid}").value
    found = store().get(VM_STATS, uuid)
    # A record of another host is a leftover of where the VM ran before a move (it expires with
    # that host's lease or is removed by its agent): never shown as this VM's figures now.
    if found is None or found.value.host != vm.host:
        raise APIError(409, "no_stats", f"VM {uuid} has no figures: they are measured while its QEMU runs (it is "
                       f"{vm.status}), and published by its host's agent every vm_stats_interval seconds")
    return jsonify(dump(found.value))


@bp.delete("/<uuid>")
def delete(uuid: str) -> Response:
    return _act(uuid, Action.DELETE)


# Only the actions: any other word (`events`) is not a POST route, so OPTIONS and a 405's Allow list
# exactly the methods each path has. (Resize, with a body of its own, is a route of its own.)
@bp.post(f"/<uuid>/<any({', '.join(a for a in Action if a is not Action.RESIZE)}):action>")
@idempotent
def act(uuid: str, action: str) -> Response:
    chosen = Action(action)  # the route's converter lets only actions through
    if chosen is Action.DELETE:
        # This path has no method at all (an empty Allow, RFC 9110 10.2.1): deleting is another path's.
        raise APIError(405, "method_not_allowed", "delete a VM with DELETE /api/v1/vms/<uuid>",
                       headers={"Allow": ""})
    return _act(uuid, chosen)


@bp.post("/<uuid>/resize")
@idempotent
def resize(uuid: str) -> Response:
    """Ask for new specs for a STOPPED VM: the scheduler checks that its host has room for them (and
    writes them, or the reason in `error`); the agent grows its disks at its next start."""
    return _act(uuid, Action.RESIZE)


def _resized(vm: VM, asked: Resize) -> Specs:
    """The VM's specs with `asked` applied, or 422 naming a disk that would shrink."""
    new = asked.applied_to(vm.specs)
    for disk in ("ssd", "hdd"):
        before, after = getattr(vm.specs, disk), getattr(new, disk)
        if after < before:
            raise APIError(422, "invalid", f"{disk}: disks only grow: the VM has {before} GiB, {after} GiB would cut "
                           "off the guest's data", fields=[{"field": disk, "message": f"at least {before}"}])
    return new


def _act(uuid: str, action: Action) -> Response:
    target: str | None = None
    asked_specs = parse(Resize) if action is Action.RESIZE else None
    if action is Action.MIGRATE:
        require_admin()
        target = parse(Migrate, optional=True).host
        if target is not None and store().get(HOSTS, target) is None:
            raise APIError(422, "invalid", f"host: no host {quote(target)}", fields=[{"field": "host", "message": "no such host"}])
    for _ in sleeps(_RETRY, attempts=store().settings.cas_attempts):
        current_vm = lookup_own(VMS, uuid, f"VM {uuid}")  # no such VM is a 404 whatever If-Match says
        check_if_match(current_vm)
        conditional = if_match() is not None
        vm = current_vm.value
        try:
            asked = request_fields(vm, action)
        except ActionRefused as refused:
            raise APIError(409, "conflict", str(refused), vm_status=vm.status.value) from None
        extra: dict[str, Any] = {}
        if action is Action.MIGRATE:
            check_migratable(vm, target)
            extra = {"migrate_to": HOSTS.key(target) if target else "*", "migrate_generation": asked["generation"]}
        if asked_specs is not None:
            extra = {"resize": _resized(vm, asked_specs)}
            # Refused now, clearly; the scheduler charges it when it writes the specs (and checks again).
            quota.check(vm.owner, quota.usage(store(), vm.owner)[0], quota.limits(store(), vm.owner),
                        change(vm, vm.evolve(specs=extra["resize"])))
        try:
            asking = f"{action.value} to {target}" if target else action.value
            if asked_specs is not None:
                asking = f"resize to {described(extra['resize'])}"
            written = write_request(current_vm, action, {**asked, **extra}, asking)
        except Conflict as exc:
            # The owner's usage changing (their other requests) is no change of the VM's.
            if conditional and exc.key != USAGES.key(vm.owner):
                raise APIError(412, "precondition_failed", "the VM changed; read it again") from None
            continue
        if written is None:
            return Response(status=204)
        return object_reply(written, 202, shown_one(written.value))
    raise APIError(409, "busy", "the VM kept changing; retry the request")


def write_request(current_vm: Versioned[VM], action: Action, fields: dict[str, Any],
                  asking: str) -> Versioned[VM] | None:
    """Write the request `fields` (`request_fields` and the action's own) of `action` on the VM as
    read, with its event saying `asking`; the VM as written, or None if it was deleted at once (it
    was never placed, or its disk is on a host that is down). `Conflict` if it changed since it was read."""
    vm, uuid = current_vm.value, current_vm.name
    if action is Action.DELETE and vm.status is Status.REQUESTED_NEW and not vm.host:
        # Nothing exists anywhere yet: no agent will ever clean up, so the VM goes now.
        _delete_at_once(current_vm, f"{asking} (it was never placed: deleted at once)")
        return None
    if action is Action.DELETE and (host_revision := stranded_on(vm)) is not None:
        # Its disk is on that host alone, whose agent may never come back: the VM goes now, and
        # the host's agent removes what is left of it there if it does (`ucloud_common.leftover`).
        _delete_at_once(current_vm, f"{asking} (its host {vm.host} is down: deleted at once; what is left of "
                        f"it there goes when {vm.host}'s agent is back)",
                        Unchanged(HOSTS, vm.host, host_revision),
                        Put(LEFTOVERS, leftover_name(vm.host, uuid), Leftover(host=vm.host, vm=vm), None))
        return None
    new = vm.evolve(**fields, request_id=request_id())
    revision = store().transact([Put(VMS, uuid, new, current_vm.mod_revision), told(Kind.VM, uuid, asking)])
    return Versioned(uuid, new, revision, current_vm.create_revision)


def _delete_at_once(current_vm: Versioned[VM], told_as: str, *also: Write) -> None:
    """Remove the VM as read, with its claims, its networks' mention of it and its owner's usage,
    and `also` (`Conflict` if any of it changed since read)."""
    vm, uuid = current_vm.value, current_vm.name
    store().transact([Remove(VMS, uuid, current_vm.mod_revision),
                      *held_by(store(), uuid, vm_claims(vm)),
                      *detached(store(), uuid, (nic.network for nic in vm.networks)),
                      charged(store(), vm.owner, change(vm, None)), *also,
                      told(Kind.VM, uuid, told_as)])


def stranded_on(vm: VM) -> int | None:
    """If the VM's host is DOWN and alone holds the VM's disk, the mod_revision of its record, for
    the deletion to depend on; else None. (A VM on shared storage is restarted elsewhere once its
    host is fenced: that host deletes it.)"""
    if not vm.host or vm.storage in SHARED_STORAGE:
        return None
    host = store().get(HOSTS, vm.host)
    return host.mod_revision if host is not None and host.value.status is HostStatus.DOWN else None


def check_migratable(vm: VM, target: str | None) -> None:
    """409 saying why the VM cannot be live-migrated (to `target`), if so."""
    if vm.storage not in SHARED_STORAGE:
        raise APIError(409, "conflict", f"cannot migrate: the VM's disk is on {vm.storage} storage, which only "
                       f"host {vm.host} reaches; only VMs on shared storage ({', '.join(sorted(SHARED_STORAGE))}) "
                       "move live (shut it down and recreate it elsewhere)")
    if vm.migration is not None or vm.migrate_generation > vm.migrated_generation:
        raise APIError(409, "conflict", "cannot migrate: a migration of this VM is already under way "
                       "(DELETE /api/v1/vms/<uuid>/migration cancels it)")
    if target == vm.host:
        raise APIError(409, "conflict", f"cannot migrate: the VM already runs on host {target}")


@bp.delete("/<uuid>/migration")
def cancel_migration(uuid: str) -> Response:
    """Cancel the VM's migration (asked, or under way): it stays on, or returns to, its host."""
    require_admin()
    for _ in sleeps(_RETRY, attempts=store().settings.cas_attempts):
        current_vm = lookup_own(VMS, uuid, f"VM {uuid}")
        vm = current_vm.value
        if not vm.migrate_to or (vm.migration is None and vm.migrate_generation <= vm.migrated_generation):
            raise APIError(409, "conflict", "no migration of this VM is under way")
        try:
            new = vm.evolve(migrate_to="", request_id=request_id())
            revision = store().transact([Put(VMS, uuid, new, current_vm.mod_revision),
                                         told(Kind.VM, uuid, "cancel the migration")])
            written = Versioned(uuid, new, revision, current_vm.create_revision)
        except Conflict:
            continue
        return object_reply(written, 202, shown_one(written.value))
    raise APIError(409, "busy", "the VM kept changing; retry the request")


def _events(uuid: str, cached: bool = False, last: int | None = None) -> list[dict[str, Any]]:
    """The VM's events (the `last` ones if given), oldest first (from the cache when `cached` and it
    is fresh). From the cache, only those are taken, and under the lock only: a VM's events are kept
    for event_retention (a week), and a VM that restarts often has thousands, all of which every GET
    of it dumped under the lock before keeping the last 20. (Names sort by time: `event_name`.)"""
    obj = ref(Kind.VM, uuid)
    mirror = cache().events
    if cached and fresh(mirror, wait=0):
        with mirror.locked() as table:
            names = table.names("object", obj)
            found = [table.items[name].value for name in (names[-last:] if last else names)]
        return [dump(e) for e in found]
    every = [dump(e) for e in object_events(store(), obj)]
    return every[-last:] if last else every


def _user_keys(name: str) -> dict[str, str]:
    user = store().get(USERS, name)
    return dict(user.value.ssh_keys) if user else {}
