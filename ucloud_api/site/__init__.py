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

from flask import Blueprint, Response, current_app, redirect, render_template, request, send_from_directory

from ucloud_api.auth import forget
from ucloud_api.body import parse
from ucloud_api.errors import APIError
from ucloud_api.replies import store
from ucloud_api.schemas import ConsoleRequest
from ucloud_api.site import session
from ucloud_api.views import consoles
from ucloud_api.views.tokens import log_in
from ucloud_common.console import ConsoleKind
from ucloud_common.user import TOKENS
from ucloud_common.vm import VMS

VENDOR = Path(__file__).parent / "vendor"
PREFIX = "/console"
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
    return render_template("vms.html", user=caller.name, csrf=session.csrf_of(request.cookies[session.SESSION_COOKIE]),
                           vms=sorted((vm.value for vm in listed), key=lambda vm: vm.name))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    if request.method == "GET" and session.signed_in(current_app, request):
        return redirect(f"{PREFIX}/", 303)
    nonce = session.login_nonce(request)
    message, status, refusal_headers = "", 200, {}
    if request.method == "POST":
        name, password = request.form.get("name", ""), request.form.get("password", "")
        if not session.check_login_nonce(request):
            message, status = "the login form had expired or cookies are off: try again (cookies are needed)", 400
        elif not name or not password:
            message, status = "give your name and your password", 400
        else:
            try:
                text, token = log_in(store(), name, password, "console")
            except APIError as refused:
                message, status, refusal_headers = refused.message, refused.status, refused.headers
            else:
                signed = redirect(f"{PREFIX}/", 303)
                session.open_session(signed, text, store().settings.login_token_hours * 3600, request.is_secure)
                return signed
    page = Response(render_template("login.html", nonce=nonce, message=message), status, refusal_headers)
    session.give_login_nonce(page, nonce, request.is_secure)
    return page


@bp.post("/logout")
def logout() -> Response:
    if session.signed_in(current_app, request) is not None:
        session.check_csrf(request.form.get("csrf"))
        token_id = request.cookies[session.SESSION_COOKIE].partition(".")[0]
        store().delete(TOKENS, token_id)  # False if already revoked: out either way
        forget(token_id)
    out = redirect(f"{PREFIX}/login", 303)
    session.close_session(out, request.is_secure)
    return out


@bp.post("/vms/<uuid>/console")
def ticket(uuid: str) -> Response:
    """The list page's buttons: a ticket as `POST /api/v1/vms/<uuid>/console` gives it, for the session's user."""
    if session.signed_in(current_app, request) is None:
        raise APIError(401, "unauthenticated", "the session has ended: log in again")
    session.check_csrf(request.headers.get(session.CSRF_HEADER))
    return consoles.issue(uuid, parse(ConsoleRequest).type)


@bp.get("/<any(vnc, serial):kind>")
def viewer(kind: str) -> Response | str:
    if not (VENDOR / "novnc" / ".version").exists() or not (VENDOR / "xterm" / ".version").exists():
        raise APIError(503, "unavailable", "the console site's browser parts are not installed: the operator "
                       "runs deploy/console-assets.sh")
    return render_template(f"{ConsoleKind(kind).value}.html")


@bp.get("/vendor/<path:name>")
def vendor(name: str) -> Response:
    # Python 3.11 does not know .mjs; a module script must be served as JavaScript or browsers refuse it.
    mimetype = "text/javascript" if name.endswith((".js", ".mjs")) else None
    return send_from_directory(VENDOR, name, mimetype=mimetype, max_age=3600)
