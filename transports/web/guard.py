"""The guard: what every request passes before a handler sees it (docs/SECURITY.md).

Theory of operation
-------------------
One middleware, inside the error middleware (so each refusal is the documented JSON error),
checks in this order, cheapest first, and stops at the first failure:

1. **Host** (DNS rebinding). A page on `evil.example` whose name the attacker re-points at
   127.0.0.1 reaches a loopback server as "same origin"; its requests still carry
   `Host: evil.example`. Served: loopback names, IP literals (rebinding needs a name), and
   `--allowed-hosts`. Anything else: 403 `permission_error`, param `Host`.
2. **Origin** (cross-site requests, CSRF, cross-site WebSocket hijacking). Browsers send
   `Origin` on every cross-origin request, on every WebSocket handshake and on same-origin
   POSTs; a page cannot forge it. A request carrying an Origin that is neither this server's
   own (the Origin's host[:port] equal to the Host header: the page the server itself served,
   whatever scheme a TLS front added) nor listed in `--allowed-origins` gets 403, param
   `Origin`; `Origin: null` (sandboxed frames, file:) is foreign. Browsers do *not* send
   Origin on a "no-cors" GET (an `<img>`, a `<script>`, a link followed: Fetch standard,
   "append a request Origin header"), and a GET starts a stream (in relay mode, on the
   operator's API key): such a request to anything but the page and its files, marked as
   another site's by Fetch Metadata (`Sec-Fetch-Site: cross-site` or `same-site`, sent by
   Chromium, Firefox and Safari 16.4+), gets 403, param `Sec-Fetch-Site`. Requests without
   either header (curl, SDKs, the lab's clients) pass: they are not a browser acting for a
   page.
3. **CORS**, only for `--allowed-origins`: a preflight (`OPTIONS` with
   `Access-Control-Request-Method`) is answered here with 204; every response to an allowed
   origin gets `Access-Control-Allow-Origin` (that origin, never `*`, since credentials are
   allowed), `Access-Control-Allow-Credentials` and `Access-Control-Expose-Headers` (added
   in `on_response_prepare`, so streaming responses get them before their headers go out).
   Without the flag no CORS header is ever sent and the browser keeps every cross-origin
   response from its page.
4. **Identity**, with `--auth`: the credential of streams/credentials.py from, in order,
   `Authorization: Bearer` (a key or session token), the `pushlab_session` cookie (a
   session), `?ticket=` on `GET /ws` (single use), and `?access_token=` only with
   `--auth-query`. None, or a bad one: 401 with `WWW-Authenticate`. The identity is put on
   the request (`common.owner_of`), and the hub refuses another identity's stream (403).
   The page, its files, `/transports`, `/healthz` and `GET /auth/session` need none (the
   page must load to ask for a credential).

The JSON-only rule for request bodies (a foreign page can POST `text/plain` without a
preflight) is enforced where bodies are read, `common.request_values`.

Cost: with the defaults the guard is two header lookups and a set membership per request
(not per token); with `--auth`, one HMAC-SHA256 per request (the `auth` experiment measures
what that costs per connection for streams and per request for polling).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from streams.credentials import SESSION_TTL_S, TICKET_TTL_S, Authority, Claim, new_secret
from streams.errors import AuthenticationError, ParamError, PermissionDenied, QuotaExceeded
from transports.web.common import CONFIG, IDENTITY_KEY, json_response
from transports.web.config import ServerConfig, split_list

AUTHORITY = web.AppKey("authority", Authority)

SESSION_COOKIE = "pushlab_session"
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
# paths a browser must reach before it holds a credential
# (/auth/session checks the credential it is given itself)
OPEN_PATHS = frozenset({"/", "/healthz", "/transports", "/favicon.ico", "/auth/session"})
OPEN_PREFIXES = ("/static/",)
# Sec-Fetch-Site values of a request another origin's page made (W3C Fetch Metadata; "same-site"
# is another port or subdomain: another origin all the same)
OTHER_SITES = frozenset({"cross-site", "same-site"})
CORS_METHODS = "GET, POST, DELETE"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_EXPOSE = "X-Pushlab-Stream, Retry-After"
CORS_MAX_AGE_S = 600
MAX_DECIDED_HOSTS = 1024


class Allowed:
    """The Host names and Origins a server accepts, parsed once from its config."""

    __slots__ = ("any_host", "decided", "hosts", "origins")

    def __init__(self, config: ServerConfig) -> None:
        names = [name.lower().rstrip(".") for name in split_list(config.allowed_hosts)]
        self.any_host = "*" in names
        self.hosts = frozenset(names) | LOOPBACK_NAMES
        self.origins = frozenset(o.lower().rstrip("/") for o in split_list(config.allowed_origins))
        # Host values already decided: a server sees a handful, each on every request, and
        # parsing an IP literal costs microseconds (the guard took 9.6 us a request before,
        # timed in-process); bounded, so a client sending random names cannot grow it
        self.decided: dict[str, bool] = {}

    def host(self, host_header: str) -> bool:
        """Whether `Host: host_header` names this server."""
        known = self.decided.get(host_header)
        if known is None:
            known = self._host(host_header)
            if len(self.decided) < MAX_DECIDED_HOSTS:
                self.decided[host_header] = known
        return known

    def _host(self, host_header: str) -> bool:
        if self.any_host:
            return True
        name = _hostname(host_header)
        if name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an IP literal: what a DNS-rebinding page cannot send


ALLOWED = web.AppKey("allowed", Allowed)


def _hostname(host_header: str) -> str:
    """The name in a Host header, without the port, brackets, case or trailing dot."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal, [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def same_origin(origin: str, host_header: str) -> bool:
    """Whether `origin` is the page this server itself served: its host[:port] is the Host
    the request was sent to (the scheme is a TLS front's business, not the page's)."""
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and authority == host_header.lower()


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin, CORS preflight and identity; see the module docstring."""
    allowed = request.app[ALLOWED]
    host = request.headers.get("Host", "")
    if not allowed.host(host):
        raise PermissionDenied(f"host {_printable(host)!r} is not served here", param="Host")
    origin = request.headers.get("Origin")
    if origin is not None:
        origin = origin.lower()
        foreign = not same_origin(origin, host)
        if foreign and origin not in allowed.origins:
            raise PermissionDenied(
                f"requests from origin {_printable(origin)!r} are not allowed", param="Origin"
            )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return _preflight(origin)
    elif request.headers.get("Sec-Fetch-Site") in OTHER_SITES and not _is_open(request.path):
        raise PermissionDenied(
            "another site's page cannot make requests here without CORS", param="Sec-Fetch-Site"
        )
    config = request.app[CONFIG]
    if config.auth and not _is_open(request.path):
        claim = identify(request, request.app[AUTHORITY], config)
        request[IDENTITY_KEY] = claim.identity
        if config.auth_query and "access_token" in request.query:
            query = [(k, v) for k, v in request.query.items() if k != "access_token"]
            request = request.clone(rel_url=request.rel_url.with_query(query))
            request[IDENTITY_KEY] = claim.identity
    return await handler(request)


def _printable(text: str) -> str:
    """At most 100 characters of a header value, safe to put in an error message."""
    return text[:100].encode("ascii", "backslashreplace").decode()


def _preflight(origin: str) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
            "Vary": "Origin",
        },
    )


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the CORS headers of a response to an allowed foreign origin
    (a preflight's `_preflight` set already: adding them again doubled its `Vary`)."""
    origin = request.headers.get("Origin")
    if origin is None or "Access-Control-Allow-Origin" in response.headers:
        return
    origin = origin.lower()
    if origin in request.app[ALLOWED].origins and not same_origin(
        origin, request.headers.get("Host", "")
    ):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
        response.headers.add("Vary", "Origin")


def identify(request: web.Request, authority: Authority, config: ServerConfig) -> Claim:
    """The claim of the request's credential (see the module docstring for where it is
    looked for); AuthenticationError when there is none or it is refused."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("use 'Authorization: Bearer <credential>'")
        return authority.verify(token.strip(), ("key", "session"))
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return authority.verify(cookie, ("session",))
    for name in ("ticket", "access_token"):  # one credential, not a choice of several
        if len(request.query.getall(name, ())) > 1:
            raise ParamError(f"parameter '{name}' given more than once", param=name)
    if request.path == "/ws" and "ticket" in request.query:
        return authority.redeem(request.query["ticket"])
    if config.auth_query and "access_token" in request.query:
        return authority.verify(request.query["access_token"], ("key",))
    raise AuthenticationError("this server needs a credential (docs/SECURITY.md)")


# -- /auth: a browser's session cookie and WebSocket tickets ----------------------------------


def _authority(request: web.Request) -> Authority:
    if not request.app[CONFIG].auth:
        raise ParamError("this server runs without --auth: it needs no credential", param=None)
    return request.app[AUTHORITY]


async def session_get(request: web.Request) -> web.Response:
    """GET /auth/session: whether this server needs a credential, and whose the caller's is."""
    config = request.app[CONFIG]
    identity = None
    if config.auth:
        try:
            identity = identify(request, request.app[AUTHORITY], config).identity
        except AuthenticationError:
            identity = None
    return json_response({"auth": config.auth, "identity": identity})


async def session_post(request: web.Request) -> web.Response:
    """POST /auth/session with `Authorization: Bearer <key>`: the session cookie for it
    (HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it)."""
    authority = _authority(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationError("send the key as 'Authorization: Bearer <key>'")
    claim = authority.verify(token.strip(), ("key",))
    ttl_s = min(SESSION_TTL_S, claim.expires_s - int(authority.now()))
    session = authority.mint(claim.identity, "session", ttl_s)
    resp = json_response({"identity": claim.identity, "expires_in_s": ttl_s})
    # Secure when the page itself is https: here, or at a TLS front that speaks plain HTTP
    # to us (the page's fetch carries its Origin; a forged one only makes the cookie Secure)
    secure = request.secure or request.headers.get("Origin", "").startswith("https://")
    resp.set_cookie(SESSION_COOKIE, session, max_age=ttl_s, path="/", httponly=True,
                    samesite="Strict", secure=secure)  # fmt: skip
    return resp


async def session_delete(request: web.Request) -> web.Response:
    """DELETE /auth/session: forget the cookie (the session token itself lives until it
    expires: a copy taken before stays valid that long, docs/SECURITY.md)."""
    _authority(request)
    resp = json_response({"identity": None})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


async def ticket_post(request: web.Request) -> web.Response:
    """POST /auth/ticket: a single-use ticket for `GET /ws?ticket=...`, valid seconds."""
    authority = _authority(request)
    if not authority.room_for_tickets():
        raise QuotaExceeded("too many tickets outstanding; try again shortly")
    identity = str(request.get(IDENTITY_KEY) or "")
    if not identity:  # /auth/ticket is not an open path: the guard has identified the caller
        raise AuthenticationError("this server needs a credential (docs/SECURITY.md)")
    ticket = authority.mint(identity, "ticket", TICKET_TTL_S)
    return json_response({"ticket": ticket, "expires_in_s": TICKET_TTL_S})


def load_authority(config: ServerConfig) -> Authority:
    """The authority of a config with --auth: from its key file (the ready line's secret=),
    or, for an app made in-process without one, a fresh key nobody else holds (a test mints
    through `app[AUTHORITY]`)."""
    if not config.auth_secret_file:
        return Authority(new_secret())
    return Authority(Path(config.auth_secret_file).read_bytes())


def write_secret(directory: Path) -> Path:
    """A fresh key in `directory`/secret, readable by this user only (the ready line names
    it: `pushlab token --secret-file` and the lab's harness mint credentials with it)."""
    path = directory / "secret"
    path.touch(mode=0o600)
    path.write_bytes(new_secret())
    return path


def install(app: web.Application, config: ServerConfig) -> None:
    """Add the guard's state, response hook and /auth routes to `app` (the middleware itself
    is listed in server.make_app, inside the error middleware)."""
    app[ALLOWED] = Allowed(config)
    if config.auth:
        app[AUTHORITY] = load_authority(config)
    if config.allowed_origins:
        app.on_response_prepare.append(_cors_headers)
    app.router.add_get("/auth/session", session_get)
    app.router.add_post("/auth/session", session_post)
    app.router.add_delete("/auth/session", session_delete)
    app.router.add_post("/auth/ticket", ticket_post)
