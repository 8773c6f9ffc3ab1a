"""The console site's sessions: a login token (`POST /api/v1/login`'s kind, named "console") carried in
an HttpOnly, SameSite=Strict cookie that lives as long as the browser session, so the site needs no
session store of its own and a user sees (and may revoke) their sessions among their tokens. Over
HTTPS the cookie is `__Host-` prefixed: no sibling subdomain can plant or shadow it.

Every state-changing request is refused when the browser says it comes from another site
(`Sec-Fetch-Site`, which a page cannot forge; same-site counts as another: a sibling subdomain is no
friend), and also carries a CSRF token derived from the session's token (a keyed hash only its
holder can compute), for browsers that send no such header. The login form, which has no session
yet, is held to a random cookie its page sets and repeats in a hidden field (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, Request, Response, g

from ucloud_api.auth import Authenticator, Caller
from ucloud_api.errors import APIError

LOGIN_COOKIE = "ucloud_console_login"
PATH = "/console/"
CSRF_HEADER = "X-CSRF-Token"


def session_cookie(request: Request) -> str:
    return "__Host-ucloud_console" if request.is_secure else "ucloud_console"


def csrf_of(session: str) -> str:
    return hmac.new(session.encode(), b"ucloud console csrf", hashlib.sha256).hexdigest()


def session_of(request: Request) -> str | None:
    return request.cookies.get(session_cookie(request)) or None


def signed_in(app: Flask, request: Request) -> Caller | None:
    """The caller this request's session cookie is for (also set as `g.caller`), or None."""
    session = session_of(request)
    if not session:
        return None
    authenticator: Authenticator = app.extensions["ucloud.auth"]
    try:
        g.caller = authenticator.of(session)
    except APIError:
        return None  # expired, revoked, or its user deleted: log in again
    g.session = session
    return g.caller  # type: ignore[no-any-return]


def check_same_site(request: Request) -> None:
    """Refuse a state-changing request another site's page made the browser send."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise APIError(403, "forbidden", "the request came from another site's page")


def check_csrf(request: Request, sent: str | None) -> None:
    check_same_site(request)
    if not sent or not hmac.compare_digest(sent, csrf_of(g.session)):
        raise APIError(403, "forbidden", "the request did not come from the console site's page: reload it")


def open_session(response: Response, request: Request, token: str) -> None:
    # A browser-session cookie: a browser closed on a shared machine keeps no session (the token
    # itself stops working after `login_token_hours` whatever the browser does).
    response.set_cookie(session_cookie(request), token, path="/" if request.is_secure else PATH,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


def close_session(response: Response, request: Request) -> None:
    response.delete_cookie(session_cookie(request), path="/" if request.is_secure else PATH,
                           secure=request.is_secure, httponly=True, samesite="Strict")


def login_nonce(request: Request) -> str:
    """The login form's double-submit value: the browser's own if it has one, else a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def give_login_nonce(response: Response, nonce: str, secure: bool) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, path=PATH, secure=secure, httponly=True, samesite="Strict")


def check_login_nonce(request: Request) -> bool:
    cookie, field = request.cookies.get(LOGIN_COOKIE), request.form.get("nonce")
    return bool(cookie and field and hmac.compare_digest(cookie, field))
