"""One registry: each transport's key names its codec, its two halves and its capabilities.

The key is the same everywhere: module names, CLI choices, and the `transport` column. Every
place that treats transports differently (charts, facts, tests, the page, experiments) asks
this registry, never a hand-written list of keys, so one `Transport` entry makes an eighth
transport first-class. Halves are import paths, resolved lazily, so that the codecs stay
free of aiohttp and the server never imports the clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aiohttp import web

    from clients.base import Client

Cancel = Literal["message", "request"]
Requests = Literal["one", "many"]
# "http": requests and responses; "upgraded": HTTP only for the handshake (WebSocket);
# "session": an HTTP/3 extended CONNECT whose streams and datagrams carry the rest (WebTransport)
Connection = Literal["http", "upgraded", "session"]
Stack = Literal["tcp", "quic"]  # what carries the transport's bytes: TCP, or QUIC over UDP


@dataclasses.dataclass(frozen=True)
class Transport:
    """A transport: where its halves live, and what it can do, for whoever must choose."""

    key: str
    label: str  # human name in charts, tables and the page's pane headers
    summary: str
    codec: str  # sans-I/O module
    server: str  # module with add_routes(app); transports may share one (poll.py)
    client: str  # "module:Class"
    order: int  # display order in charts, tables and the page (lowest first)
    colour: str  # the transport's colour in every chart and on the page
    resumable: bool  # a broken connection can resume after the last seq received
    cancel: Cancel  # "message" on the open connection, or a "request": DELETE /streams/{id}
    requests_per_answer: Requests  # "one", or "many" (polling: one request per batch)
    connection: Connection = "http"  # see `Connection`
    holds: bool = True  # the server holds a request open while no token is ready
    incremental: bool = True  # tokens reach the client as they are made, not all at the end
    variant_of: str = ""  # another transport's wire in a different framing (openai: sse)
    browser_clients: tuple[str, ...] = ()  # the page's client functions (static/clients.js)
    stack: Stack = "tcp"  # "quic": the transport cannot cross a TCP proxy or front

    @property
    def cancel_requests(self) -> int:
        """Extra HTTP requests an explicit cancel costs: 0 for a message, 1 for a DELETE."""
        return 0 if self.cancel == "message" else 1

    def client_class(self) -> type[Client]:
        """The client half's class (imported now, not when the registry is)."""
        module, _, name = self.client.partition(":")
        cls: type[Client] = getattr(importlib.import_module(module), name)
        return cls

    def add_routes(self) -> Callable[[web.Application], None]:
        """The server half's `add_routes(app)` (imported now, not when the registry is)."""
        add: Callable[[web.Application], None] = importlib.import_module(self.server).add_routes
        return add

    def capabilities(self) -> dict[str, object]:
        """What the page and reports may know of a transport: everything but import paths."""
        hidden = {"codec", "server", "client"}
        fields = dataclasses.asdict(self)
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k not in hidden
        }


# Colours: matplotlib's tab10, one per transport, fixed so every chart agrees.
TRANSPORTS: dict[str, Transport] = {
    t.key: t
    for t in (
        Transport(
            "sse",
            "SSE",
            "Server-Sent Events: one long HTTP response, text/event-stream",
            "transports.sse",
            "transports.web.sse",
            "clients.sse:SSEClient",
            order=0,
            colour="#1f77b4",  # blue
            resumable=True,
            cancel="request",
            requests_per_answer="one",
            browser_clients=("sse", "sse-fetch"),
        ),
        Transport(
            "websocket",
            "WebSocket",
            "WebSocket: one upgraded connection, a JSON text frame per token",
            "transports.websocket",
            "transports.web.websocket",
            "clients.websocket:WebSocketClient",
            order=1,
            colour="#ff7f0e",  # orange
            resumable=True,
            cancel="message",
            requests_per_answer="one",
            connection="upgraded",
            browser_clients=("websocket",),
        ),
        Transport(
            "longpoll",
            "Long polling",
            "HTTP long polling: each request held until tokens exist",
            "transports.longpoll",
            "transports.web.poll",
            "clients.poll:LongPollClient",
            order=2,
            colour="#2ca02c",  # green
            resumable=True,
            cancel="request",
            requests_per_answer="many",
            browser_clients=("longpoll",),
        ),
        Transport(
            "ndjson",
            "NDJSON",
            "NDJSON over a chunked HTTP response (fetch() stream reader)",
            "transports.ndjson",
            "transports.web.ndjson",
            "clients.ndjson:NDJSONClient",
            order=4,
            colour="#9467bd",  # purple
            resumable=True,
            cancel="request",
            requests_per_answer="one",
            browser_clients=("ndjson",),
        ),
        Transport(
            "shortpoll",
            "Short polling",
            "HTTP short polling at a client-chosen interval",
            "transports.shortpoll",
            "transports.web.poll",
            "clients.poll:ShortPollClient",
            order=3,
            colour="#d62728",  # red
            resumable=True,
            cancel="request",
            requests_per_answer="many",
            holds=False,
            browser_clients=("shortpoll",),
        ),
        Transport(
            "oneshot",
            "One-shot",
            "One request, one response once the whole answer exists",
            "transports.oneshot",
            "transports.web.oneshot",
            "clients.oneshot:OneShotClient",
            order=5,
            colour="#8c564b",  # brown
            resumable=True,  # `?stream=&after=` re-reads a stream, though its client re-asks all
            cancel="request",
            requests_per_answer="one",
            incremental=False,
            browser_clients=("oneshot",),
        ),
        Transport(
            "openai",
            "OpenAI stream",
            "OpenAI Chat Completions stream (SSE data: chunks, no event ids, [DONE])",
            "transports.openai",
            "transports.web.openai",
            "clients.openai:OpenAIClient",
            order=6,
            colour="#e377c2",  # pink
            resumable=False,  # no event ids: nothing names where to resume
            cancel="request",
            requests_per_answer="one",
            variant_of="sse",
        ),
        Transport(
            "webtransport",
            "WebTransport",
            "WebTransport over HTTP/3 (QUIC): a JSON line per token on a unidirectional stream",
            "transports.webtransport",
            "transports.web.webtransport",
            "clients.webtransport:WebTransportClient",
            order=7,
            colour="#17becf",  # cyan
            resumable=True,
            cancel="message",
            requests_per_answer="one",
            connection="session",
            browser_clients=("webtransport",),
            stack="quic",
        ),
    )
}

# The keys in registry order. `register` rebinds it: read `registry.KEYS` for the current
# keys; `from transports.registry import KEYS` keeps the ones known at import.
KEYS: tuple[str, ...] = tuple(TRANSPORTS)


def get(key: str) -> Transport:
    try:
        return TRANSPORTS[key]
    except KeyError:
        raise ValueError(
            f"unknown transport {key!r}; choose from {', '.join(TRANSPORTS)}"
        ) from None


def parse_keys(text: str) -> list[str]:
    """`all` or a comma-separated list of keys, validated, order kept, no repeats."""
    if text.strip() == "all":
        return list(TRANSPORTS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValueError("no transport named")
    for key in keys:
        get(key)
    return list(dict.fromkeys(keys))


def ordered() -> list[Transport]:
    """Every transport in display order (`order`, then registry order)."""
    return sorted(TRANSPORTS.values(), key=lambda t: t.order)


def keys_where(predicate: Callable[[Transport], bool]) -> tuple[str, ...]:
    """The keys of the transports `predicate` accepts, in registry order."""
    return tuple(t.key for t in TRANSPORTS.values() if predicate(t))


def by_browser_client(name: str) -> Transport:
    """The transport whose page client function is `name` (e.g. "sse-fetch": sse)."""
    for transport in TRANSPORTS.values():
        if name in transport.browser_clients:
            return transport
    raise ValueError(f"no transport has the browser client {name!r}")


def register(transport: Transport) -> None:
    """Add `transport` (its key must be new) in this process only (worker processes started
    by a fleet do not see it); the server mounts it from the next `make_app`."""
    global KEYS
    if transport.key in TRANSPORTS:
        raise ValueError(f"transport {transport.key!r} is already registered")
    TRANSPORTS[transport.key] = transport
    KEYS = tuple(TRANSPORTS)


def unregister(key: str) -> Transport:
    """Remove a transport `register` added; returns it."""
    global KEYS
    transport = TRANSPORTS.pop(key)
    KEYS = tuple(TRANSPORTS)
    return transport


@contextlib.contextmanager
def registered(transport: Transport) -> Iterator[Transport]:
    """`with registered(t):` the registry holds `t`, and no longer afterwards."""
    register(transport)
    try:
        yield transport
    finally:
        unregister(transport.key)
