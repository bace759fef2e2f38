"""The demo page: `GET /`, `GET /static/{name}`, `GET /transports`, and `POST /debug/cut` for
its "Cut" button.

The page (transports/web/static/) is plain HTML, CSS and ES modules: no build step, nothing
from a CDN. Each transport's browser client is a short function in `static/clients.js`, meant
to be read beside docs/PROTOCOL.md. Which panes exist, in what order, with which label and
colour, comes from the registry (`GET /transports`): the page knows no list of transports.

`POST /debug/cut` (mounted only with `--lab-debug`, answered only to the page's own origin)
resets every TCP connection the server holds from the caller's IP address
(except the one carrying the cut request): what a dropped Wi-Fi link or a NAT box forgetting
its mappings does to a browser. The sockets get `SO_LINGER` 0 and are aborted, so the peer
sees a TCP RST mid-response ("connection reset"), not a clean end. Streams live in the hub,
not in connections, so nothing is cancelled: each client must notice the broken connection
and resume on its own, or not. Behind a proxy the caller's address is the proxy's, so every
proxied connection is cut. Do not press it while a benchmark runs from the same machine.

QUIC has no RST: the WebTransport endpoint's connections from the same address (UDP, not in
aiohttp's list) are closed at once with CONNECTION_CLOSE (RFC 9000 section 10.2, error
H3_NO_ERROR, reason "cut"): the browser sees its session fail (`WebTransport.closed`
rejects), as it sees a reset TCP connection fail, and the hub's stream lives on. A
silently dropped path would instead leave it waiting for its idle timeout (30 s in
Chromium), which no pane should sit through.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from aiohttp import web

from streams.errors import PermissionDenied
from transports import registry
from transports.errors import error_body
from transports.web.common import json_response
from transports.web.guard import same_origin

STATIC_DIR = Path(__file__).parent / "static"
INDEX_ROUTE = "pushlab-page-index"  # a named resource: mounting twice is a no-op

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts need a JavaScript MIME type
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


def static_files() -> dict[str, Path]:
    """The files the page may serve: regular files directly in the static folder, by name."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}


def _not_found(name: str) -> web.Response:
    return json_response(error_body(f"no static file {name!r}", "not_found_error", "name"), 404)


def _file_response(name: str) -> web.Response:
    path = static_files().get(name)  # a name outside the folder ("..", "a/b") is never listed
    if path is None:
        return _not_found(name)
    return web.Response(
        body=path.read_bytes(),  # read per request: an edited file shows on reload
        headers={"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-cache"},
    )


async def index(request: web.Request) -> web.Response:
    """GET /: the page."""
    return _file_response("index.html")


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: one file of the static folder, with its content type."""
    return _file_response(request.match_info["name"])


async def transports(request: web.Request) -> web.Response:
    """GET /transports: every registered transport's capabilities, in display order."""
    return json_response([t.capabilities() for t in registry.ordered()])


def _peer_host(transport: asyncio.BaseTransport | None) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None


def reset(transport: asyncio.Transport) -> None:
    """Abort `transport` so that the peer sees a TCP RST (SO_LINGER on, 0 s), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def cut(request: web.Request) -> web.Response:
    """POST /debug/cut: reset every connection from the caller's address but this one.

    aiohttp's `Server` lists its open connections (`Server.connections`, each a
    RequestHandler with its `transport`); a request reaches it through its protocol's
    `_manager`. Reading that at the moment of the cut costs the rest of the server nothing,
    where tracking connections in a middleware would add work to every measured request.
    """
    if not same_origin(request.headers.get("Origin", "").lower(), request.headers.get("Host", "")):
        # the page's own button sends its Origin (a fetch POST always does); a request
        # without one is not the page, and a foreign one the guard has refused already
        raise PermissionDenied("POST /debug/cut is for the page's own Cut button", param="Origin")
    manager = getattr(request.protocol, "_manager", None)
    if manager is None or not hasattr(manager, "connections"):
        message = "this aiohttp does not expose its open connections"
        return json_response(error_body(message, "server_error"), status=501)
    peer = _peer_host(request.transport)
    victims = [
        handler.transport
        for handler in manager.connections
        if handler.transport is not None
        and handler.transport is not request.transport
        and _peer_host(handler.transport) == peer
    ]
    for transport in victims:
        reset(transport)
    quic = _cut_quic(request.app, peer)
    return json_response({"reset": len(victims) + quic, "quic": quic, "peer": peer})


def _cut_quic(app: web.Application, peer: str | None) -> int:
    """Close the WebTransport endpoint's QUIC connections from `peer`; how many."""
    from transports.web import webtransport

    endpoint = app.get(webtransport.ENDPOINT)
    if endpoint is None or peer is None:
        return 0
    victims = [p for p in list(endpoint.protocols) if p.peer == peer and not p.gone]
    for proto in victims:
        proto.close(error_code=webtransport.H3_NO_ERROR, reason_phrase="cut")
    return len(victims)


def add_routes(app: web.Application, *, debug: bool = False) -> None:
    """Mount the page on `app` (a second call does nothing); `POST /debug/cut` only with
    `debug` (the server's --lab-debug): it resets other connections of the caller's address,
    which behind a shared NAT or proxy are other people's."""
    if INDEX_ROUTE in app.router.named_resources():
        return
    app.router.add_get("/", index, name=INDEX_ROUTE)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/transports", transports)
    if debug:
        app.router.add_post("/debug/cut", cut)
