"""Users (admin only, but for setting one's own password).

A user is known by name, and so is what they own (`owner` in every record, their upload folder,
their name claims): a new user is refused a name that anything still carries, so that no one
inherits a deleted user's VMs, networks, images or files. The last admin cannot be deleted.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from ucloud_api import throttle, userdeletion
from ucloud_api.audit import told
from ucloud_api.auth import create_user, current, require_admin
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.passwords import check_password, hash_password
from ucloud_api.query import flag
from ucloud_api.replies import check_if_match, dump, lookup, object_reply, store
from ucloud_api.schemas import PasswordChange, UserCreate
from ucloud_api.views.quotas import shown
from ucloud_common.event import Kind
from ucloud_common.store import Conflict, Put
from ucloud_common.uploads import make_user_folder
from ucloud_common.user import PASSWORDS, USERS, Password

log = logging.getLogger(__name__)

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
    try:
        make_user_folder(store().settings.upload_dir, user.name)
    except OSError as exc:
        # The user exists and works; their first upload makes the folder again (or says why it cannot).
        log.error("the upload folder of user %s was not made: %s", user.name, exc)
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
    """A user who owns nothing goes at once (204). Else 409 listing what they own, or with
    ?cascade=true all of it is deleted (`ucloud_api.userdeletion`): 202 saying what is still going,
    until a repeat of the request finds nothing left and removes the user (204)."""
    require_admin()
    cascade = flag("cascade")
    user = lookup(USERS, name, f"user {name}")
    check_if_match(user)
    userdeletion.check_not_last_admin(user)  # the first thing to say: no cascade helps
    if not cascade and not user.value.deleting:
        owns = userdeletion.holdings(name)
        if not owns.empty:
            raise APIError(409, "owns_things", f"user {name} owns {owns.sentence()}: delete those first, or "
                           "delete the user with all of it (?cascade=true)", owns=owns.left())
        userdeletion.remove_user(user, f"delete user {name}")
        return Response(status=204)
    marked = userdeletion.mark(user)
    left = userdeletion.sweep(marked)
    if store().get(USERS, name) is None:
        return Response(status=204)
    return jsonify({"name": name, "deleting": True, "left": left.left(),
                    "note": "deleting; repeat this request until it answers 204 (the user is gone)"}), 202


@bp.put("/<name>/password")
def set_password(name: str) -> Response:
    """Set a user's password: an admin anyone's, a user their own, giving the current one if they have one
    (so that a stolen token is not enough to take the account over; wrong guesses count as failed logins)."""
    caller = current()
    if caller.name != name and not caller.is_admin:
        raise APIError(403, "forbidden", "you may set only your own password (an admin may set anyone's)")
    body = parse(PasswordChange)
    user = lookup(USERS, name, f"user {name}")
    if user.value.deleting:
        raise APIError(409, "user_deleted", f"user {name} is being deleted")
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
    read, not the name claims: an imported image has none; nor the upload folder, which an operator
    may make before the user (the seed's way). (A user deleted at once, owning nothing, whose token
    still works in a worker whose watch has not delivered the deletion yet, for milliseconds, could
    race this; a cascade waits `userdeletion.SETTLE_SECONDS`.) Not checked by `ucloud-api
    create-admin`, the operator's at the console: `ucloud-vm import-image` makes images owned by
    "admin" before the first admin exists."""
    owns = userdeletion.holdings(name, folder=False)
    if not owns.empty:
        raise APIError(409, "name_in_use", f"the name {name} still owns {owns.sentence()} of a deleted user: a new "
                       f"user of that name would inherit them; delete them first (files: from the upload folder "
                       f"{name}/)")
