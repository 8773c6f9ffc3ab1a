"""Networks: records with a VXLAN id and MAC addresses allocated without collision.

A VXLAN id and a MAC are claimed (`ucloud_common.claim`) in the same transaction as the object they
belong to, so concurrent requests can never get the same one. Attaching and detaching also
rewrite the network record, so that deleting a network and attaching a VM to it cannot both win.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response

from ucloud_api.audit import request_id, told
from ucloud_api.auth import current
from ucloud_api.body import parse
from ucloud_api.cache import list_reply
from ucloud_api.errors import APIError
from ucloud_api.idempotency import idempotent
from ucloud_api.limits import NETWORKS_PER_USER
from ucloud_api.naming import create_named, new_nic
from ucloud_api.replies import check_if_match, created_reply, lookup_own, object_reply, store
from ucloud_api.schemas import Attachment, NetworkCreate
from ucloud_api.views.vms import shown_one
from ucloud_common.event import Kind
from ucloud_common.claim import IPV6_PREFIXES, MACS, NETWORK_NAMES, VXLAN_IDS, Claim, mac_claim, owned, prefix_claim
from ucloud_common.ipv6 import random_subnet
from ucloud_common.network import NETWORKS, Network
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.states import Requested
from ucloud_common.store import Conflict, Put, Remove, Versioned
from ucloud_common.vm import NIC_SLOTS, VMS, VM

bp = Blueprint("networks", __name__, url_prefix="/api/v1/networks")

VXLAN_IDS_RANGE = (1, 2**24 - 1)
_RETRY = Backoff(initial=0.002, maximum=0.1)
_RNG = random.SystemRandom()


@bp.post("")
@idempotent
def create() -> Response:
    caller = current()
    body = parse(NetworkCreate)
    uuid = str(uuidlib.uuid4())

    def make() -> tuple[Network, list[Put[Any]]]:
        # Both claimed with the network: a VXLAN id or a /64 another request took meanwhile is a
        # lost race, and make() runs again (a given prefix in use is refused before that).
        vxlan_id = random.randint(*VXLAN_IDS_RANGE)
        prefix = body.ipv6_prefix or random_subnet(store().settings.ipv6_pool, _RNG)
        network = Network(uuid=uuid, owner=caller.name, name=body.name, vxlan_id=vxlan_id, ipv6_prefix=prefix)
        return network, [Put(VXLAN_IDS, str(vxlan_id), Claim(holder=uuid), 0),
                         Put(IPV6_PREFIXES, prefix_claim(prefix), Claim(holder=uuid), 0),
                         told(Kind.NETWORK, uuid, f"create network {body.name} ({prefix})")]

    if body.ipv6_prefix is not None:
        holder = store().get(IPV6_PREFIXES, prefix_claim(body.ipv6_prefix))
        if holder is not None and store().get(NETWORKS, holder.value.holder) is not None:
            raise APIError(409, "in_use", f"ipv6_prefix {body.ipv6_prefix} is another network's")

    created = create_named(NETWORKS, NETWORK_NAMES, caller.name, body.name, uuid, make, "network",
                           NETWORKS_PER_USER)
    return created_reply(created, f"/api/v1/networks/{uuid}")


@bp.get("")
def list_() -> Response:
    caller = current()
    return list_reply(NETWORKS, index=None if caller.is_admin else "owner", value=caller.name)


@bp.get("/<uuid>")
def get(uuid: str) -> Response:
    return object_reply(lookup_own(NETWORKS, uuid, f"network {uuid}"))


@bp.delete("/<uuid>")
def delete(uuid: str) -> Response:
    for _ in sleeps(_RETRY, attempts=store().settings.cas_attempts):
        network = lookup_own(NETWORKS, uuid, f"network {uuid}")
        check_if_match(network)
        try:
            remove(network)
        except Conflict:
            continue  # a VM was attached meanwhile: look again
        return Response(status=204)
    raise APIError(409, "busy", "the network kept changing; retry the request")


def remove(network: Versioned[Network], why: str = "") -> None:
    """Delete the network as read, with its claims; 409 if a VM uses it, `Conflict` if it changed."""
    uuid, n = network.name, network.value
    users = [vm for vm in (store().get(VMS, v) for v in n.attached)
             if vm is not None and any(nic.network == uuid for nic in vm.value.networks)]
    if users:
        raise APIError(409, "in_use", f"network {uuid} is attached to VM {users[0].name}; detach it first")
    store().transact([Remove(NETWORKS, uuid, network.mod_revision),
                      Remove(NETWORK_NAMES, owned(n.owner, n.name), None),
                      Remove(VXLAN_IDS, str(n.vxlan_id), None),
                      *([Remove(IPV6_PREFIXES, prefix_claim(n.ipv6_prefix), None)] if n.ipv6_prefix else []),
                      told(Kind.NETWORK, uuid, f"delete network {n.name}{why}")])


@bp.post("/<uuid>/attach")
@idempotent
def attach(uuid: str) -> Response:
    def plug(network: Network, vm: VM) -> tuple[VM, tuple[str, ...], list[Put[Any] | Remove[Any]]]:
        if any(nic.network == uuid for nic in vm.networks):
            raise APIError(409, "attached", f"VM {vm.uuid} is already attached to network {uuid}")
        if len(vm.networks) >= len(NIC_SLOTS):
            raise APIError(409, "too_many", f"a VM has at most {len(NIC_SLOTS)} network interfaces")
        nic = new_nic(uuid, vm.networks)
        attached = tuple(v for v in network.attached if v != vm.uuid) + (vm.uuid,)
        return vm.evolve(networks=(*vm.networks, nic)), attached, [Put(MACS, mac_claim(nic.mac), Claim(holder=vm.uuid), 0)]

    return _change_attachment(uuid, plug, "attach")


@bp.post("/<uuid>/detach")
@idempotent
def detach(uuid: str) -> Response:
    def unplug(network: Network, vm: VM) -> tuple[VM, tuple[str, ...], list[Put[Any] | Remove[Any]]]:
        nics = [nic for nic in vm.networks if nic.network == uuid]
        if not nics:
            raise APIError(409, "not_attached", f"VM {vm.uuid} is not attached to network {uuid}")
        attached = tuple(v for v in network.attached if v != vm.uuid)
        return (vm.evolve(networks=tuple(n for n in vm.networks if n.network != uuid)), attached,
                [Remove(MACS, mac_claim(nic.mac), None) for nic in nics])

    return _change_attachment(uuid, unplug, "detach")


AttachmentChange = Callable[[Network, VM], tuple[VM, tuple[str, ...], list[Any]]]


def _change_attachment(uuid: str, change: AttachmentChange, verb: str) -> Response:
    """Rewrite a VM's NICs and the network's attached list together, by compare-and-swap on both,
    told in both event logs."""
    body = parse(Attachment)
    for _ in sleeps(_RETRY, attempts=store().settings.cas_attempts):
        network, vm = _both(uuid, body.vm)
        new_vm, attached, claims = change(network.value, vm.value)
        new_vm = new_vm.evolve(generation=vm.value.generation + 1, request_id=request_id())
        try:
            revision = store().transact([
                Put(VMS, vm.name, new_vm, vm.mod_revision),
                Put(NETWORKS, uuid, network.value.evolve(attached=attached), network.mod_revision),
                *claims,
                told(Kind.VM, vm.name, f"{verb} network {uuid}"),
                told(Kind.NETWORK, uuid, f"{verb} VM {vm.name}"),
            ])
        except Conflict:
            continue
        return object_reply(Versioned(vm.name, new_vm, revision, vm.create_revision), 202, shown_one(new_vm))
    raise APIError(409, "busy", "the VM or network kept changing; retry the request")


def _both(network_uuid: str, vm_uuid: str) -> tuple[Versioned[Network], Versioned[VM]]:
    network = lookup_own(NETWORKS, network_uuid, f"network {network_uuid}")
    vm = lookup_own(VMS, vm_uuid, f"VM {vm_uuid}")
    check_if_match(vm)  # the answer is the VM, so its ETag is what If-Match names
    if vm.value.owner != network.value.owner:
        raise APIError(409, "owner_mismatch", "a VM can only be attached to a network of its owner")
    if vm.value.requested is Requested.DELETED:
        raise APIError(409, "conflict", f"VM {vm_uuid} is being deleted")
    return network, vm
