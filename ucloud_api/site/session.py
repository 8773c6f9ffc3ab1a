"""The console site's sessions: a login token (`POST /api/v1/login`'s kind, named "console") carried in
an HttpOnly, SameSite=Strict cookie scoped to /console/, so the site needs no session store of its own
and a user sees (and may revoke) their sessions among their tokens.

Every state-changing request also carries a CSRF token derived from the session's token (a keyed hash
only its holder can compute), so a page elsewhere cannot make a signed-in browser log out or take a
console ticket even where SameSite is not honoured. The login form, which has no session yet, is held
to a random cookie its page sets and repeats in a hidden field (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, Request, Response, g

from ucloud_api.auth import Authenticator, Caller
from ucloud_api.errors import APIError

SESSION_COOKIE = "ucloud_console"
LOGIN_COOKIE = "ucloud_console_login"
PATH = "/console/"
CSRF_HEADER = "X-CSRF-Token"


def csrf_of(session: str) -> str:
    return hmac.new(session.encode(), b"ucloud console csrf", hashlib.sha256).hexdigest()


def signed_in(app: Flask, request: Request) -> Caller | None:
    """The caller this request's session cookie is for (also set as `g.caller`), or None."""
    session = request.cookies.get(SESSION_COOKIE)
    if not session:
        return None
    authenticator: Authenticator = app.extensions["ucloud.auth"]
    try:
        g.caller = authenticator.of(session)
    except APIError:
        return None  # expired, revoked, or its user deleted: log in again
    g.session = session
    return g.caller  # type: ignore[no-any-return]


def check_csrf(sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent, csrf_of(g.session)):
        raise APIError(403, "forbidden", "the request did not come from the console site's page: reload it")


def open_session(response: Response, token: str, lifetime: float, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(lifetime), path=PATH, secure=secure, httponly=True,
                        samesite="Strict")
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


def close_session(response: Response, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path=PATH, secure=secure, httponly=True, samesite="Strict")


def login_nonce(request: Request) -> str:
    """The login form's double-submit value: the browser's own if it has one, else a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def give_login_nonce(response: Response, nonce: str, secure: bool) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, path=PATH, secure=secure, httponly=True, samesite="Strict")


def check_login_nonce(request: Request) -> bool:
    cookie, field = request.cookies.get(LOGIN_COOKIE), request.form.get("nonce")
    return bool(cookie and field and hmac.compare_digest(cookie, field))
