"""Users (admin only, but for setting one's own password).

A user is known by name, and so is what they own (`owner` in every record, their upload folder,
their name claims): a new user is refused a name that anything still carries, so that no one
inherits a deleted user's VMs, networks, images or files. The last admin cannot be deleted.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ucloud_api import throttle
from ucloud_api.audit import told
from ucloud_api.auth import create_user, current, require_admin
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.idempotency import REPLIES
from ucloud_api.passwords import check_password, hash_password
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import PasswordChange, UserCreate
from ucloud_api.views.quotas import shown
from ucloud_common.claim import owned
from ucloud_common.event import Kind
from ucloud_common.file import FILES
from ucloud_common.image import IMAGES
from ucloud_common.network import NETWORKS
from ucloud_common.quota import QUOTAS, USAGES
from ucloud_common.store import Conflict, Put, Remove
from ucloud_common.user import PASSWORDS, TOKENS, USERS, Password, Role
from ucloud_common.vm import VMS

bp = Blueprint("users", __name__, url_prefix="/api/v1/users")


@bp.post("")
def create() -> Response:
    """No Idempotency-Key: its kept answer would store the new user's token in etcd for a day and show it
    again. A retry after a lost answer gets 409; the user can then log in with the password given here."""
    require_admin()
    body = parse(UserCreate)
    if store().get(USERS, body.name) is None:
        _check_nothing_owned_by(body.name)
    user, token = create_user(store(), body.name, body.role, body.password,
                              also=[told(Kind.USER, body.name, f"create user {body.name} ({body.role.value})")])
    created = store().get(USERS, user.name)
    assert created is not None
    return object_reply(created, 201, {**dump(user), "token": token})


@bp.get("")
def list_() -> Response:
    require_admin()
    return jsonify([dump(u.value) for u in store().list(USERS).items.values()])


@bp.get("/<name>")
def get(name: str) -> Response:
    """A user (admin); `me`: the caller's own record, with their quota and usage."""
    if name == "me":
        mine = current().name
        user = lookup(USERS, mine, f"user {mine}")
        return object_reply(user, body={**dump(user.value), "quota": shown(mine)})
    require_admin()
    return object_reply(lookup(USERS, name, f"user {name}"))


@bp.delete("/<name>")
def delete(name: str) -> Response:
    require_admin()
    user = lookup(USERS, name, f"user {name}")
    check_if_match(user)
    tokens = [t for t in store().list(TOKENS).items.values() if t.value.user == name]
    writes: list[Put[Any] | Remove[Any]] = [Remove(USERS, name, user.mod_revision),
                                            *(Remove(TOKENS, t.name, None) for t in tokens), Remove(PASSWORDS, name, None),
                                            # A new user of the name starts at the default quota;
                                            # what stays owned by the name is counted again if needed.
                                            Remove(QUOTAS, name, None), Remove(USAGES, name, None),
                                            told(Kind.USER, name, f"delete user {name}")]
    if user.value.role is Role.ADMIN:
        admins = [u for u in store().list(USERS).items.values() if u.value.role is Role.ADMIN and u.name != name]
        if not admins:
            raise APIError(409, "last_admin", f"user {name} is the last admin; make another admin first")
        # Another admin must still exist when this one goes: rewritten unchanged under compare-and-swap,
        # so that two admins deleting each other at once conflict instead of leaving no admin.
        keeper = admins[0]
        writes.append(Put(USERS, keeper.name, keeper.value, keeper.mod_revision))
    try:
        store().transact(writes)
    except Conflict:
        raise APIError(409, "busy", "the users changed meanwhile; retry the request") from None
    # Replies kept for the user's Idempotency-Key retries would be replayed to a new user of the name.
    store().delete_all(REPLIES, owned(name, ""))
    return Response(status=204)


@bp.put("/<name>/password")
def set_password(name: str) -> Response:
    """Set a user's password: an admin anyone's, a user their own, giving the current one if they have one
    (so that a stolen token is not enough to take the account over; wrong guesses count as failed logins)."""
    caller = current()
    if caller.name != name and not caller.is_admin:
        raise APIError(403, "forbidden", "you may set only your own password (an admin may set anyone's)")
    body = parse(PasswordChange)
    user = lookup(USERS, name, f"user {name}")
    existing = store().get(PASSWORDS, name)
    if existing is not None and not caller.is_admin:
        keys = throttle.subjects(name, request.remote_addr or "unknown")
        throttle.check_not_shut_out(store(), keys)
        if not check_password(existing.value.argon2, body.current_password or ""):
            throttle.count_failure(store(), keys)
            raise APIError(403, "wrong_password", "current_password is missing or wrong; it is needed to change "
                           "your own password")
    try:
        # The user rewritten unchanged under compare-and-swap: a user deleted meanwhile gets no password.
        store().transact([Put(USERS, name, user.value, user.mod_revision),
                          Put(PASSWORDS, name, Password(argon2=hash_password(body.password)),
                              existing.mod_revision if existing else 0),
                          told(Kind.USER, name, "set the password")])
    except Conflict:
        raise APIError(409, "busy", f"user {name} changed meanwhile; retry the request") from None
    return Response(status=204)


def _check_nothing_owned_by(name: str) -> None:
    """409 if a VM, network, image or registered file still has `owner` `name` (a deleted user's):
    everything is owned by name, so a new user of that name would inherit it all. The records are
    read, not the name claims: an imported image has none. (A deleted user's token still working in a
    worker whose watch has not delivered the deletion yet, for milliseconds, could race this; nothing
    else creates objects of a user who does not exist.) Not checked by `ucloud-api create-admin`, the operator's at the console:
    `ucloud-vm import-image` makes images owned by "admin" before the first admin exists."""
    counts = {what: len(store().list(family, where={"owner": name}).items)
             for what, family in (("VMs", VMS), ("networks", NETWORKS), ("images", IMAGES), ("files", FILES))}
    if any(counts.values()):
        held = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
        raise APIError(409, "name_in_use", f"the name {name} still owns {held} of a deleted user: a new user of "
                       f"that name would inherit them; delete them first (files: from the upload folder {name}/)")
