"""The Flask application factory: views, authentication, and errors that are always JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ucloud_api import audit, cache, metrics, openapi, ratelimit, site
from ucloud_api.auth import Authenticator
from ucloud_api.errors import APIError
from ucloud_api.query import APIRequest
from ucloud_api.views import consoles, events, files, guacamole, hosts, images, keys, networks, quotas, tokens, users, vms
from ucloud_common.config import Settings
from ucloud_common.quota import QuotaExceeded
from ucloud_common.store import Conflict, Store, StoreError, StoreRefused, StoreUnavailable, TooLarge

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = frozenset({"/healthz", "/api/v1/openapi.json", "/api/v1/login", metrics.PATH})


class _App(Flask):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._own_sync: frozenset[Callable[..., Any]] = frozenset()

    def seal(self) -> None:
        """Remember which of the app's views and hooks, all registered by now, Flask need not wrap."""
        own = [*self.view_functions.values(), *chain.from_iterable(self.before_request_funcs.values()),
               *chain.from_iterable(self.after_request_funcs.values()),
               *chain.from_iterable(self.teardown_request_funcs.values()), *self.teardown_appcontext_funcs,
               *(handler for by_code in self.error_handler_spec.values() for by_class in by_code.values()
                 for handler in by_class.values())]
        self._own_sync = frozenset(func for func in own if Flask.ensure_sync(self, func) is func)

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Flask asks inspect whether each view and hook is a coroutine function on every call: eight
        # times a request here, as much as the authentication. Only the app's own are remembered:
        # Flask also asks of functions made for one request (`after_this_request`, a class-based
        # view's bound method), which a cache of every function asked kept, one per request, for good.
        return func if func in self._own_sync else super().ensure_sync(func)


def create_app(settings: Settings, store: Store | None = None) -> Flask:
    app = _App("ucloud_api")
    app.request_class = APIRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    the_store = store or Store(settings)
    app.extensions["ucloud.store"] = the_store
    read_cache = cache.install(app, the_store, vms.rendered)
    authenticator = Authenticator(the_store, read_cache.tokens, read_cache.users)
    app.extensions["ucloud.auth"] = authenticator
    metrics.instrument(app)

    audit.install(app)

    @app.before_request
    def authenticate() -> None:
        if site.serves(request.path):
            # The console site signs its users in with its own session cookie (`ucloud_api.site`), whose
            # views refuse a request without one. Known here already, so that its writes (a console
            # ticket and its event) count against the user's write rate as the API's do.
            site.session.signed_in(app, request)
        elif request.path not in PUBLIC_PATHS:
            g.caller = authenticator.caller()

    ratelimit.install(app, settings.user_write_rate)

    for blueprint in (users.bp, quotas.bp, consoles.bp, guacamole.bp, vms.bp, networks.bp, keys.bp, files.files,
                      images.images, images.stores, hosts.bp, tokens.bp, tokens.login_bp, site.bp, events.bp):
        app.register_blueprint(blueprint)

    @app.get("/healthz")
    def healthz() -> Response | tuple[Response, int]:
        try:
            revision = the_store.revision()
        except StoreError as exc:
            return jsonify({"status": "unavailable", "etcd": str(exc)}), 503
        return jsonify({"status": "ok", "etcd_revision": revision})

    @app.get("/api/v1/openapi.json")
    def spec() -> Response:
        return jsonify(openapi.document(app))

    @app.errorhandler(APIError)
    def api_error(exc: APIError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.body()), exc.status, exc.headers

    @app.errorhandler(QuotaExceeded)
    def over_quota(exc: QuotaExceeded) -> tuple[Response, int]:
        # 409, as for the per-user limits: a conflict with what the user holds now, which deleting
        # something resolves (403 would say the user may never do this).
        return jsonify(APIError(409, "quota_exceeded", str(exc), quota=exc.resource.name, limit=exc.limit,
                                usage=exc.usage, asked=exc.asked).body()), 409

    @app.errorhandler(Conflict)
    def kept_losing(exc: Conflict) -> tuple[Response, int]:
        # A write that lost every compare-and-swap it tried: others kept changing the same keys.
        log.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify(APIError(409, "busy", "what this request changes kept changing meanwhile; nothing was "
                                "written; retry the request").body()), 409

    @app.errorhandler(StoreUnavailable)
    def unavailable(exc: StoreUnavailable) -> tuple[Response, int, dict[str, str]]:
        log.error("%s %s: %s", request.method, request.path, exc)
        body = APIError(503, "unavailable", "the state store (etcd) is unreachable; retry shortly (a "
                        "write answered with this may or may not have been applied: retry it with the "
                        "same Idempotency-Key)").body()
        return jsonify(body), 503, {"Retry-After": "2"}

    @app.errorhandler(TooLarge)
    def too_large(exc: TooLarge) -> tuple[Response, int]:
        # Not an outage: this write will never fit, and retrying it must not look worth it.
        log.warning("%s %s: %s", request.method, request.path, exc)
        body = APIError(413, "too_large", "this write is larger than the state store takes in one request "
                        "(etcd's --max-request-bytes, 1.5 MiB by default); nothing was changed").body()
        return jsonify(body), 413

    @app.errorhandler(StoreRefused)
    def refused(exc: StoreRefused) -> tuple[Response, int]:
        # etcd refused the request itself (credentials, permissions, a request over its size limit):
        # nothing was applied and retrying it as is will not help.
        log.error("%s %s: %s", request.method, request.path, exc)
        body = APIError(503, "store_refused", "the state store (etcd) refused this request; nothing was "
                        "changed; the reason is in the API's log").body()
        return jsonify(body), 503

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = ("the request body exceeds the limit" if status == 413
                   else f"no such path: {request.path}; the API's paths (and a VM's actions) are listed in "
                        "/api/v1/openapi.json" if status == 404 else (exc.description or exc.name))
        # Werkzeug's own headers, e.g. the Allow of a 405, which RFC 9110 requires (its Content-Type
        # is HTML's: the body here is JSON).
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return jsonify(APIError(status, code, message).body()), status, headers

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("%s %s failed", request.method, request.path)
        body: dict[str, Any] = APIError(500, "internal", "the API failed on this request; the error is in "
                                        "its log").body()
        return jsonify(body), 500

    app.seal()
    return app
