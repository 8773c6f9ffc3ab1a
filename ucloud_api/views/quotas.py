"""Quotas: a user's quota and usage (`shown`, also in `GET /users/me`), and an admin setting a user's
quota (partial: what the body names) or recounting their usage from the records.

`me` in these paths names the caller: no user is created with that name (`user.check_user_name`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ucloud_api.audit import told
from ucloud_api.auth import current, require_admin
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.replies import lookup, store
from ucloud_api.schemas import QuotaUpdate
from ucloud_common.event import Kind
from ucloud_common.quota import QUOTAS, RESOURCES, Quota, Usage, limits, recount, usage
from ucloud_common.retry import Backoff, sleeps
from ucloud_common.store import Conflict, Put
from ucloud_common.user import USERS

bp = Blueprint("quotas", __name__, url_prefix="/api/v1/users")

_RETRY = Backoff(initial=0.002, maximum=0.1)


def shown(user: str) -> dict[str, dict[str, Any]]:
    """Each resource's usage and quota, in the unit named (bytes, GiB, or a count), and whether an
    admin set the quota (else it is the settings' default)."""
    held, _ = usage(store(), user)
    most = limits(store(), user)
    found = store().get(QUOTAS, user)
    return {r.name: {"used": getattr(held, r.name), "limit": most[r.name], "unit": r.unit, "what": r.what,
                     "set": found is not None and getattr(found.value, r.name) is not None} for r in RESOURCES}


def _whose(name: str) -> str:
    """The user `name` names (`me`: the caller); 403 unless it is the caller or the caller is an admin."""
    caller = current()
    if name == "me":
        return caller.name
    if name != caller.name and not caller.is_admin:
        raise APIError(403, "forbidden", "you may see only your own quota (GET /api/v1/users/me/quota)")
    return name


@bp.get("/<name>/quota")
def get(name: str) -> Response:
    user = _whose(name)
    lookup(USERS, user, f"user {user}")
    return jsonify(shown(user))


@bp.put("/<name>/quota")
def set_(name: str) -> Response:
    """Set the resources the body names (null: back to the default); the others stay as they are."""
    require_admin()
    user = _whose(name)
    body = parse(QuotaUpdate)
    asked = {field: getattr(body, field) for field in body.model_fields_set}
    said = ", ".join(f"{field}={'default' if value is None else value}" for field, value in asked.items())
    for _ in sleeps(_RETRY, attempts=store().settings.cas_attempts):
        record = lookup(USERS, user, f"user {user}")
        found = store().get(QUOTAS, user)
        quota = (found.value if found else Quota(user=user)).evolve(**asked)
        try:
            # The user rewritten unchanged under compare-and-swap: a user deleted meanwhile gets no quota.
            store().transact([Put(USERS, user, record.value, record.mod_revision),
                              Put(QUOTAS, user, quota, found.mod_revision if found else 0),
                              told(Kind.USER, user, f"set the quota: {said or 'nothing'}")])
        except Conflict:
            continue
        return jsonify(shown(user))
    raise APIError(409, "busy", f"user {user} or their quota kept changing; retry the request")


@bp.post("/<name>/quota/recount")
def recount_(name: str) -> Response:
    """Recount the user's usage from their records: the repair of a usage that drifted."""
    require_admin()
    user = _whose(name)
    lookup(USERS, user, f"user {user}")

    def event(before: Usage | None, after: Usage) -> list[Put[Any]]:
        moved = [f"{r.name} {getattr(before, r.name) if before else 'none'} → {getattr(after, r.name)}"
                 for r in RESOURCES if before is None or getattr(before, r.name) != getattr(after, r.name)]
        return [told(Kind.USER, user, f"recount the usage: {', '.join(moved) or 'no change'}")]

    recount(store(), user, event)
    return jsonify(shown(user))
