"""One registry: each transport's key names its codec, its server half and its client half.

The key is the same everywhere: module names, CLI choices, and the `transport` column.
Halves are import paths, resolved lazily, so that the codecs stay free of aiohttp and the
server never imports the clients.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Transport:
    key: str
    summary: str
    codec: str  # sans-I/O module
    server: str  # module with add_routes(app)
    client: str  # "module:Class"

    def client_class(self) -> Any:
        module, _, name = self.client.partition(":")
        return getattr(importlib.import_module(module), name)


TRANSPORTS: dict[str, Transport] = {
    t.key: t
    for t in (
        Transport(
            "sse",
            "Server-Sent Events: one long HTTP response, text/event-stream",
            "transports.sse",
            "transports.web.sse",
            "clients.sse:SSEClient",
        ),
        Transport(
            "websocket",
            "WebSocket: one upgraded connection, a JSON text frame per token",
            "transports.websocket",
            "transports.web.websocket",
            "clients.websocket:WebSocketClient",
        ),
        Transport(
            "longpoll",
            "HTTP long polling: each request held until tokens exist",
            "transports.longpoll",
            "transports.web.poll",
            "clients.poll:LongPollClient",
        ),
        Transport(
            "ndjson",
            "NDJSON over a chunked HTTP response (fetch() stream reader)",
            "transports.ndjson",
            "transports.web.ndjson",
            "clients.ndjson:NDJSONClient",
        ),
        Transport(
            "shortpoll",
            "HTTP short polling at a client-chosen interval",
            "transports.shortpoll",
            "transports.web.poll",
            "clients.poll:ShortPollClient",
        ),
        Transport(
            "oneshot",
            "One request, one response once the whole answer exists",
            "transports.oneshot",
            "transports.web.oneshot",
            "clients.oneshot:OneShotClient",
        ),
        Transport(
            "openai",
            "OpenAI Chat Completions stream (SSE data: chunks, no event ids, [DONE])",
            "transports.openai",
            "transports.web.openai",
            "clients.openai:OpenAIClient",
        ),
    )
}

KEYS: tuple[str, ...] = tuple(TRANSPORTS)


def get(key: str) -> Transport:
    try:
        return TRANSPORTS[key]
    except KeyError:
        raise ValueError(f"unknown transport {key!r}; choose from {', '.join(KEYS)}") from None


def parse_keys(text: str) -> list[str]:
    """`all` or a comma-separated list of keys, validated, order kept, no repeats."""
    if text.strip() == "all":
        return list(KEYS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValueError("no transport named")
    for key in keys:
        get(key)
    return list(dict.fromkeys(keys))
