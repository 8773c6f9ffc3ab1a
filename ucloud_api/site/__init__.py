"""The console site, served by `ucloud-api` under /console/: log in with a name and password, see your
VMs, open one's screen (noVNC) or serial console (xterm.js) through a one-time ticket.

Pages are rendered here; the browser parts come from `vendor/` (noVNC and xterm.js, fetched pinned by
`deploy/console-assets.sh`). A viewer page (/console/vnc, /console/serial) needs no session: it opens
the websocket URL in its fragment, whose ticket is the authority (the API's ticket answer links it as
`page`, so a CLI user who holds a token can use it too). Nothing here shows a VM that is not the
signed-in user's, admins included: the site is every user's own view.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, send_from_directory
from pydantic import ValidationError

from ucloud_api.auth import forget
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.replies import store
from ucloud_api.schemas import ConsoleRequest, Login
from ucloud_api.site import session
from ucloud_api.views import consoles
from ucloud_api.views.tokens import log_in, revoked
from ucloud_common.console import PROXIES, ConsoleKind
from ucloud_common.user import TOKENS
from ucloud_common.vm import VMS

VENDOR = Path(__file__).parent / "vendor"
PREFIX = "/console"
# Inline styles: xterm.js and noVNC make <style> elements and style attributes of their own.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

bp = Blueprint("site", __name__, url_prefix=PREFIX, template_folder="templates", static_folder="static")


def serves(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


@bp.after_request
def headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def vms() -> Response | str:
    caller = session.signed_in(current_app, request)
    if caller is None:
        return redirect(f"{PREFIX}/login", 303)
    listed = store().list(VMS, where={"owner": caller.name}).items.values()
    return render_template("vms.html", user=caller.name, csrf=session.csrf_of(g.session),
                           vms=sorted((vm.value for vm in listed), key=lambda vm: vm.name))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    if request.method == "GET" and session.signed_in(current_app, request):
        return redirect(f"{PREFIX}/", 303)
    nonce = session.login_nonce(request)
    try:
        if request.method == "POST":
            return _logged_in()
        message, status, headers = "", 200, {}
    except APIError as refused:
        message, status, headers = refused.message, refused.status, refused.headers
    page = Response(render_template("login.html", nonce=nonce, message=message), status, headers)
    session.give_login_nonce(page, nonce, request.is_secure)
    return page


def _logged_in() -> Response:
    """The answer to a login form that is right (a new session; the browser's old one revoked), or
    APIError saying what is wrong."""
    session.check_same_site(request)
    if not session.check_login_nonce(request):
        raise APIError(400, "bad_request", "the login form had expired or cookies are off: try again (cookies "
                       "are needed)")
    try:
        form = Login.model_validate({"name": request.form.get("name", ""),
                                     "password": request.form.get("password", "")})
    except ValidationError:
        raise APIError(401, "unauthenticated", "wrong name or password") from None  # as for any wrong name
    text, _ = log_in(store(), form.name, form.password, "console", evict=True)
    if session.signed_in(current_app, request) is not None:
        _revoke(g.session)
    signed = redirect(f"{PREFIX}/", 303)
    session.open_session(signed, request, text)
    return signed


@bp.post("/logout")
def logout() -> Response:
    if session.signed_in(current_app, request) is not None:
        session.check_csrf(request, request.form.get("csrf"))
        _revoke(g.session)
    out = redirect(f"{PREFIX}/login", 303)
    session.close_session(out, request)
    return out


def _revoke(token: str) -> None:
    token_id = token.partition(".")[0]
    found = store().get(TOKENS, token_id)
    if found is not None:  # else already revoked: out either way
        store().transact(revoked(found))
    forget(token_id)


@bp.post("/vms/<uuid>/console")
def ticket(uuid: str) -> Response:
    """The list page's buttons: a ticket as `POST /api/v1/vms/<uuid>/console` gives it, for the session's user."""
    if session.signed_in(current_app, request) is None:
        raise APIError(401, "unauthenticated", "the session has ended: log in again")
    session.check_csrf(request, request.headers.get(session.CSRF_HEADER))
    return consoles.issue(uuid, parse(ConsoleRequest).type)


@bp.get("/<any(vnc, serial):kind>")
def viewer(kind: str) -> Response | str:
    if not (VENDOR / "novnc" / ".version").exists() or not (VENDOR / "xterm" / ".version").exists():
        raise APIError(503, "unavailable", "the console site's browser parts are not installed: the operator "
                       "runs deploy/console-assets.sh")
    # The page opens only the console proxies ucloud knows: a link whose fragment names another
    # websocket (someone's fake terminal asking for a password) is refused by the page.
    proxies = sorted({proxy.value.url for proxy in store().list(PROXIES).items.values()})
    return render_template(f"{ConsoleKind(kind).value}.html", proxies=" ".join(proxies))


@bp.get("/vendor/<path:name>")
def vendor(name: str) -> Response:
    # Python 3.11 does not know .mjs; a module script must be served as JavaScript or browsers refuse it.
    mimetype = "text/javascript" if name.endswith((".js", ".mjs")) else None
    return send_from_directory(VENDOR, name, mimetype=mimetype, max_age=3600)
