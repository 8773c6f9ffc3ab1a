"""Images (made by image-scanner from files users uploaded, `ucloud_api.views.files`)."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from flask import Blueprint, Response, jsonify

from ucloud_api.audit import told
from ucloud_api.auth import current
from ucloud_api.body import parse
from ucloud_api.cache import list_reply
from ucloud_api.errors import APIError, not_found
from ucloud_api.idempotency import idempotent
from ucloud_api.naming import create_named
from ucloud_api.replies import check_if_match, created_reply, lookup, lookup_own, object_reply, store
from ucloud_api.schemas import ImageCreate
from ucloud_common.claim import IMAGE_NAMES, owned
from ucloud_common.event import Kind
from ucloud_common.file import FILES
from ucloud_common.image import IMAGE_DELETIONS, IMAGES, Image, ImageDeletion
from ucloud_common.imagestore import LOCAL
from ucloud_common.quota import change, charged, transact_counted
from ucloud_common.store import Conflict, Put, Remove, Versioned
from ucloud_common.vm import VMS

images = Blueprint("images", __name__, url_prefix="/api/v1/images")


stores = Blueprint("image_stores", __name__, url_prefix="/api/v1/image-stores")


@stores.get("")
def list_stores() -> Response:
    return jsonify([{"name": name, "type": "local" if name == "local" else "rbd"}
                    for name in store().settings.image_stores])


@images.post("")
@idempotent
def create() -> Response:
    caller = current()
    body = parse(ImageCreate)
    if body.public and not caller.is_admin:
        raise APIError(403, "forbidden", "only an admin makes public images")
    stores = store().settings.image_stores
    if body.store not in stores:
        raise APIError(422, "invalid", f"store: no image store {body.store}; there are: {', '.join(stores)}",
                       fields=[{"field": "store", "message": "no such image store"}])
    file = store().get(FILES, body.file)
    if file is None or file.value.owner != caller.name:
        raise APIError(422, "invalid", f"file: you have no file {body.file}",
                       fields=[{"field": "file", "message": "no such file"}])
    uuid = str(uuidlib.uuid4())
    image = Image(uuid=uuid, owner=caller.name, name=body.name, store_name=body.store,
                  file_uuid=body.file, public=body.public)
    created = create_named(IMAGES, IMAGE_NAMES, caller.name, body.name, uuid, lambda: (image, [
        charged(store(), caller.name, change(None, image)),
        told(Kind.IMAGE, uuid, f"create image {body.name} from file {body.file} in store {body.store}"
                               f"{' (public)' if body.public else ''}")]), "image")
    return created_reply(created, f"/api/v1/images/{uuid}")


@images.get("")
def list_images() -> Response:
    caller = current()
    return list_reply(IMAGES, keep=lambda image: caller.is_admin or image.public or image.owner == caller.name)


@images.get("/<uuid>")
def get(uuid: str) -> Response:
    image = lookup(IMAGES, uuid, f"image {uuid}")
    caller = current()
    if not (caller.is_admin or image.value.public or image.value.owner == caller.name):
        raise not_found(f"image {uuid}")
    return object_reply(image)


@images.delete("/<uuid>")
def delete(uuid: str) -> Response:
    image = lookup_own(IMAGES, uuid, f"image {uuid}")
    check_if_match(image)
    deleted(image)
    return Response(status=204)


def deleted(image: Versioned[Image], why: str = "") -> None:
    """Delete the image as read, with its name claim, releasing it from its owner's usage; 409 if a VM
    is based on it, or if it changed meanwhile. It is marked `deleting` before the VMs are looked at:
    a VM created before the mark is found, one being created from what was read before fails its
    comparison of the image's revision (`ucloud_api.views.vms.create`), one after sees the mark."""
    uuid = image.name
    try:
        marked = image if image.value.deleting else store().replace(
            IMAGES, uuid, image.value.evolve(deleting=True), image.mod_revision)
    except Conflict:
        raise APIError(409, "busy", f"image {uuid} changed meanwhile; read it again") from None
    users = [vm.value.name for vm in store().list(VMS, where={"image": uuid}).items.values()]
    if users:
        try:
            store().replace(IMAGES, uuid, image.value.evolve(deleting=False), marked.mod_revision)
        except Conflict:
            pass  # changed meanwhile (another deletion's mark): theirs to settle
        raise APIError(409, "in_use", f"image {uuid} is the base of VM {users[0]}; delete the VM first")

    def removal() -> tuple[list[Remove[Any] | Put[Any]], dict[str, float]] | None:
        current = store().get(IMAGES, uuid)
        if current is None:
            return None  # (deleted by another request meanwhile)
        if current.mod_revision != marked.mod_revision:
            raise APIError(409, "busy", f"image {uuid} changed while it was being deleted; retry")
        return removal_of(current, why)

    transact_counted(store(), image.value.owner, removal)


def removal_of(image: Versioned[Image], why: str = "") -> tuple[list[Remove[Any] | Put[Any]], dict[str, float]]:
    """The writes that delete the image as read, with its name claim, and the change of its owner's
    usage (for `transact_counted`)."""
    uuid = image.name
    # Its data goes after the record: a local image's files by each host's agent, an RBD image by
    # image-scanner, told by the deletion's record.
    in_ceph: list[Put[Any]] = [Put(IMAGE_DELETIONS, uuid, ImageDeletion(uuid=uuid, store_name=image.value.store_name),
                                   None)] if image.value.store_name != LOCAL else []
    return [Remove(IMAGES, uuid, image.mod_revision),
            Remove(IMAGE_NAMES, owned(image.value.owner, image.value.name), None), *in_ceph,
            told(Kind.IMAGE, uuid, f"delete image {image.value.name}{why}")], change(image.value, None)
