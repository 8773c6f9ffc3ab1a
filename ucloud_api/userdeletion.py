"""Deleting a user: what they own, and deleting it all (`DELETE /api/v1/users/<name>?cascade=true`).

A user who owns nothing goes at once. Otherwise the plain request is refused with what they own;
a cascade marks the user as being deleted (from then on their tokens are gone and no request of
theirs is authenticated, so nothing new is made for them), then, on this request and on every repeat
of it, `sweep` deletes whatever of theirs can go now: VMs through the normal requested-delete path
(their agents stop them and free their disks, then delete the records), networks and images no VM
uses any more, their files (records and upload folder). The API finishes the deletion, no daemon:
the request that finds nothing left removes the user record. Every step is idempotent, so a repeat,
two admins at once, or an API restart between repeats are all safe; `ucloud user delete --cascade
--wait` repeats it until the user is gone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ucloud_api.audit import told
from ucloud_api.auth import forget
from ucloud_api.errors import APIError
from ucloud_api.idempotency import REPLIES
from ucloud_api.replies import store
from ucloud_api.views import images, networks, vms
from ucloud_common.claim import owned
from ucloud_common.event import Kind
from ucloud_common.file import FILES
from ucloud_common.image import IMAGES
from ucloud_common.network import NETWORKS
from ucloud_common.quota import QUOTAS, USAGES, change, transact_counted
from ucloud_common.record import R, utcnow
from ucloud_common.states import Action, ActionRefused, Requested
from ucloud_common.store import Conflict, Put, Remove, Versioned
from ucloud_common.uploads import is_temporary, remove_user_folder, user_folder
from ucloud_common.user import PASSWORDS, TOKENS, USERS, Role, User
from ucloud_common.vm import VMS, request_fields

log = logging.getLogger(__name__)

SOME = 5  # names shown per kind: enough to recognise, short enough for one line
# How long after the mark a request of the user may still be under way: authenticated just before
# it (or by a worker whose watch has not delivered it: milliseconds, seconds when etcd is slow), it
# may still create something. The user record outlives the mark by this much, so that the sweep
# after it finds what such a request made; a request runs for at most a few etcd timeouts.
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Holdings:
    """What a user owns, by kind ("VMs", "networks", "images", "files"): the names of each."""

    kinds: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.kinds.values())

    def left(self) -> dict[str, dict[str, Any]]:
        """As an answer shows it: a count and some names of each kind owned."""
        return {kind: {"count": len(names), "some": names[:SOME]} for kind, names in self.kinds.items() if names}

    def sentence(self) -> str:
        """e.g. "2 VMs (web1, web2), 1 file (disk.qcow2)"."""
        return ", ".join(f"{len(names)} {kind if len(names) > 1 else kind[:-1]} ({', '.join(names[:SOME])}"
                         f"{', …' if len(names) > SOME else ''})" for kind, names in self.kinds.items() if names)


def holdings(name: str, folder: bool = True) -> Holdings:
    """What `name` owns, as its records say; with `folder`, also the files in its upload folder that
    file-scan has not registered yet (they are stored all the same)."""
    files = {f.value.filename for f in store().list(FILES, where={"owner": name}).items.values()}
    if folder:
        files |= _in_folder(name)
    return Holdings({
        "VMs": sorted(v.value.name for v in store().list(VMS, where={"owner": name}).items.values()),
        "networks": sorted(n.value.name for n in store().list(NETWORKS, where={"owner": name}).items.values()),
        "images": sorted(i.value.name for i in store().list(IMAGES, where={"owner": name}).items.values()),
        "files": sorted(files),
    })


def _in_folder(name: str) -> set[str]:
    try:
        return {entry for entry in os.listdir(user_folder(store().settings.upload_dir, name))
                if not is_temporary(entry)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def check_not_last_admin(user: Versioned[User]) -> list[Put[Any]]:
    """409 if `user` is the last admin; else the write that keeps another admin while this one goes."""
    if user.value.role is not Role.ADMIN:
        return []
    admins = [u for u in store().list(USERS).items.values()
              if u.value.role is Role.ADMIN and u.name != user.name and not u.value.deleting]
    if not admins:
        raise APIError(409, "last_admin", f"user {user.name} is the last admin; make another admin first")
    # Rewritten unchanged under compare-and-swap, so that two admins deleting each other at once
    # conflict instead of leaving no admin.
    keeper = admins[0]
    return [Put(USERS, keeper.name, keeper.value, keeper.mod_revision)]


def remove_user(user: Versioned[User], message: str) -> None:
    """Remove the user record (as read) with its tokens, password and upload folder; 409 if the users
    changed meanwhile."""
    name = user.name
    tokens = [t for t in store().list(TOKENS).items.values() if t.value.user == name]
    try:
        store().transact([Remove(USERS, name, user.mod_revision), *(Remove(TOKENS, t.name, None) for t in tokens),
                          Remove(PASSWORDS, name, None), *check_not_last_admin(user),
                          # A new user of the name starts at the default quota; what stays owned by
                          # the name is counted again if needed.
                          Remove(QUOTAS, name, None), Remove(USAGES, name, None),
                          told(Kind.USER, name, message)])
    except Conflict:
        raise APIError(409, "busy", "the users changed meanwhile; retry the request") from None
    remove_user_folder(store().settings.upload_dir, name)
    # Replies kept for the user's Idempotency-Key retries would be replayed to a new user of the name.
    store().delete_all(REPLIES, owned(name, ""))


def mark(user: Versioned[User]) -> Versioned[User]:
    """The user marked as being deleted (if not yet), its tokens and password removed with the mark:
    from then on no request of theirs is authenticated."""
    if user.value.deleting:
        return user
    name = user.name
    marked = user.value.evolve(deleting_since=utcnow())
    tokens = [t for t in store().list(TOKENS).items.values() if t.value.user == name]
    try:
        revision = store().transact([Put(USERS, name, marked, user.mod_revision), *check_not_last_admin(user),
                                     *(Remove(TOKENS, t.name, None) for t in tokens), Remove(PASSWORDS, name, None),
                                     told(Kind.USER, name, f"delete user {name} with all it owns")])
    except Conflict:
        raise APIError(409, "busy", f"user {name} changed meanwhile; retry the request") from None
    for token in tokens:
        forget(token.name)  # this process at once; the others when their watch delivers it
    return Versioned(name, marked, revision, user.create_revision)


def sweep(user: Versioned[User]) -> Holdings:
    """Delete what of the (marked) user's can go now; what is left. Removes the user once nothing is
    left and the mark is `SETTLE_SECONDS` old: until then a request authenticated just before the
    mark may still make something, which a later sweep must find."""
    name, why = user.name, f" (its owner {user.name} is being deleted)"
    for vm in store().list(VMS, where={"owner": name}).items.values():
        if vm.value.requested is Requested.DELETED and vms.stranded_on(vm.value) is None:
            continue  # asked already: its agent is at it (one whose host is down, never: deleted now)
        try:
            vms.write_request(vm, Action.DELETE, request_fields(vm.value, Action.DELETE), f"delete{why}")
        except (ActionRefused, Conflict) as exc:  # looked at again by the next sweep
            log.info("VM %s of %s is not deleted yet: %s", vm.name, name, exc)
    for network in store().list(NETWORKS, where={"owner": name}).items.values():
        _try(networks.remove, network, why)
    for image in store().list(IMAGES, where={"owner": name}).items.values():
        _try(images.deleted, image, why)
    remove_user_folder(store().settings.upload_dir, name)
    for file in store().list(FILES, where={"owner": name}).items.values():
        try:  # with the release of its bytes from the user's usage, as file-scan removes a file gone
            transact_counted(store(), name, lambda file=file: ([Remove(FILES, file.name, file.mod_revision)],
                                                               change(file.value, None)), enforce=False)
        except Conflict:  # file-scan updated it meanwhile: the next sweep
            pass
    left = holdings(name)
    assert user.value.deleting_since is not None, "sweep only a marked user"
    if left.empty and utcnow() - user.value.deleting_since >= timedelta(seconds=SETTLE_SECONDS):
        remove_user(user, f"user {name} deleted: nothing of theirs is left")
    return left


def _try(remove: Callable[[Versioned[R], str], None], obj: Versioned[R], why: str) -> None:
    try:
        remove(obj, why)
    except (APIError, Conflict) as exc:  # still used by a VM that is going: the next sweep
        log.info("%s is not deleted yet: %s", obj.name, exc)


