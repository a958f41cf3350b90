"""Authentication and route rules (``DICOMSVC_AUTH=none|token|oidc``): an ASGI middleware.

Each HTTP request is matched to its route (the app's own route list, ``/dicomweb`` included,
in the router's order) and that route's rule (``http.rules``). Unless the rule is ``public``,
the caller must present ``Authorization: Bearer <token>`` (RFC 6750 §2.1):

- ``token``: an API token made by ``dicomsvc token create``, found by its SHA-256
  (``storage.tokens``); revoked tokens are refused;
- ``oidc``: an OpenID Connect access token (a JWT) verified against the provider's keys
  (``auth.oidc``, in an I/O thread: it may fetch keys); API tokens work here too, for scripts;
- ``none``: no token; everyone is an admin, and nothing is recorded as anyone's.

A missing or bad token is ``401`` with ``WWW-Authenticate: Bearer`` (RFC 6750 §3: with
``error="invalid_token"`` when one was sent), a role too low ``403`` (``insufficient_scope``);
both JSON ``{"error", "detail"}``. The details never quote the token or its claims.

The request's ``Identity`` is put in ``scope["state"]["user"]`` (``request.state.user``) for
the handlers -- ``identity``, ``user_of`` and ``owner_of`` below read it -- and for the
audit trail; a refusal's reason code is in ``scope["state"]["auth_failure"]``.
"""

import logging
import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, compile_path

from ..auth import tokens
from ..auth.failure import AuthFailure
from ..config import Config
from ..identity import ANONYMOUS, Identity, visible_owner
from ..storage import tokens as token_rows
from . import rules

log = logging.getLogger("dicomsvc.auth")
BEARER = re.compile(r"Bearer +([\x21-\x7e]+) *", re.IGNORECASE)  # RFC 6750 §2.1 (b64token, roughly)
REALM = 'Bearer realm="dicomsvc"'
LOOPBACK = ("127.0.0.1", "::1", "localhost", "[::1]")


# For handlers --------------------------------------------------------------------------------


def identity(request: Request) -> Identity:
    """Who the request is (set by ``AuthMiddleware``; without it, as with DICOMSVC_AUTH=none)."""
    return request.scope.get("state", {}).get("user") or ANONYMOUS


def user_of(request: Request) -> str | None:
    """The name recorded as the owner of what this request stores; None without authentication."""
    return identity(request).owner


def owner_of(request: Request) -> str | None:
    """The owner filter of this request's reads: the caller's name when DICOMSVC_VISIBILITY=own
    and the caller is no admin (others' instances are then 404), else None (everything)."""
    return visible_owner(identity(request), request.app.state.svc.config.visibility)


def warn_if_open(config: Config, logger: logging.Logger) -> None:
    """At start-up: serving beyond loopback without authentication is worth a warning."""
    if config.auth == "none" and config.host not in LOOPBACK:
        logger.warning(
            "DICOMSVC_AUTH=none and listening on %s: anyone who reaches this port may read and delete "
            "everything. Set DICOMSVC_AUTH=token or oidc (README: Authentication).",
            config.host,
        )


# The middleware ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    regex: re.Pattern
    methods: frozenset[str]
    template: str


def route_table(routes, prefix: str = "") -> list[_Entry]:
    """(regex, methods, template) of every route, mounted ones included, in the router's order."""
    out = []
    for r in routes:
        if isinstance(r, Mount):
            out += route_table(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            full = prefix + r.path
            regex, _, _ = compile_path(full)
            out.append(_Entry(regex, frozenset(r.methods or ()), rules.template(full)))
    return out


class AuthMiddleware:
    def __init__(self, app, config: Config):
        self.app = app
        self.config = config
        self.verifier = None
        if config.auth == "oidc":  # PyJWT, cryptography, httpx: loaded only when they are used (idle memory)
            from ..auth.oidc import OidcVerifier

            self.verifier = OidcVerifier.from_config(config)
        self._table: list[_Entry] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        if self.config.auth == "none":
            state["user"] = ANONYMOUS
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":  # CORS preflights are answered outside; others are 405
            return await self.app(scope, receive, send)
        rule, params = self._rule(scope)
        if rule == rules.PUBLIC or (rule == rules.METRICS and not self.config.metrics_auth):
            return await self.app(scope, receive, send)
        try:
            who = await self._authenticate(scope)
        except AuthFailure as failure:
            state["auth_failure"] = failure.reason
            log.info("authentication refused: %s", failure.reason)
            return await self._refuse(scope, receive, send, failure)
        state["user"] = who
        needed = {rules.METRICS: rules.READER, None: rules.READER}.get(rule, rule)
        if needed == rules.SELF:
            allowed = who.is_admin or (who.has(rules.READER) and params.get("user") == who.user)
        else:
            allowed = who.has(needed)
        if not allowed:
            state["auth_failure"] = "forbidden"
            detail = (
                "only that user or an admin may read this"
                if needed == rules.SELF
                else f"this needs the {needed} role" + ("" if who.role else " (the token carries no role of this service)")
            )
            response = JSONResponse(
                {"error": "forbidden", "detail": detail},
                status_code=403,
                headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _rule(self, scope) -> tuple[str | None, dict]:
        """The rule of the route this request will reach, and its path parameters; (None, {})
        when it reaches none (the router will answer 404 or 405)."""
        if self._table is None:
            self._table = route_table(scope["app"].routes)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        for entry in self._table:
            match = entry.regex.match(path)
            if match and method in entry.methods:
                return rules.rule(entry.template, method) or rules.ADMIN, match.groupdict()
        return None, {}

    async def _authenticate(self, scope) -> Identity:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            raise AuthFailure("missing", "this needs an Authorization: Bearer token")
        match = BEARER.fullmatch(header.decode("latin-1"))
        if match is None:
            raise AuthFailure("malformed", "the Authorization header is not 'Bearer <token>'")
        token = match.group(1)
        svc = scope["app"].state.svc
        if tokens.looks_like_token(token):
            row = await token_rows.find(svc.db, tokens.token_hash(token))
            if row is None:
                raise AuthFailure("unknown_token", "the token is unknown or revoked")
            return Identity(user=row["user"], display=row["user"], roles=frozenset({row["role"]}), method="token")
        if self.verifier is None:
            raise AuthFailure("malformed", "the token is not an API token of this service")
        return await svc.io(self.verifier.verify, token)

    async def _refuse(self, scope, receive, send, failure: AuthFailure) -> None:
        headers = {}
        if failure.status == 401:
            sent = failure.reason != "missing"
            headers["WWW-Authenticate"] = REALM + (', error="invalid_token"' if sent else "")
        error = "unauthorized" if failure.status == 401 else "auth_unavailable"
        response = JSONResponse({"error": error, "detail": failure.detail}, status_code=failure.status, headers=headers)
        await response(scope, receive, send)
