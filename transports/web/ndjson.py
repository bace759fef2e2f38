"""NDJSON server half: one JSON line per token over a chunked response."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from streams.hub import Stream, Token
from transports import ndjson as codec
from transports.web.common import (
    CONFIG,
    COUNTERS,
    deliver,
    open_stream,
    request_values,
    serve_stream,
    streaming_headers,
    written,
)

KEY = "ndjson"


async def handle(request: web.Request) -> web.StreamResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    stream, after = await open_stream(request, await request_values(request))
    config = request.app[CONFIG]
    resp = web.StreamResponse(headers=streaming_headers(config, "application/x-ndjson", stream))
    # No enable_chunked_encoding(): aiohttp chunks HTTP/1.1 responses without a length by
    # itself, and an HTTP/1.0 peer (nginx's default upstream protocol) gets a body delimited
    # by the connection's end instead of a 500 for forbidden chunking.
    return await serve_stream(
        request,
        resp,
        stream,
        counters,
        lambda: pump(resp, stream, after, config.heartbeat_s, counters, config.write_timeout_s),
    )


async def pump(
    resp: web.StreamResponse,
    stream: Stream,
    after: int,
    heartbeat_s: float,
    counters: dict[str, int],
    write_timeout_s: float = 0.0,
) -> None:
    """Write the stream's tokens after `after` as they appear, then the end line;
    WriteTimeout when a write waits `write_timeout_s` (0: no limit) for the socket."""
    await written(resp.write(codec.encode_started(stream.id, after)), write_timeout_s)

    def write(batch: list[Token]) -> Coroutine[Any, Any, None]:
        # often run by the hub's emitting callback itself (common.deliver): keep it plain;
        # an empty line is the keep-alive: readers skip it
        data = b"".join([codec.encode_line(t.payload) for t in batch]) if batch else b"\n"
        counters["tokens_sent"] += len(batch)
        counters["bytes_sent"] += len(data)
        return resp.write(data)

    await deliver(stream, after, write, heartbeat_s, write_timeout_s)
    done = codec.encode_done(stream.id, stream.last_seq, stream.reason)
    await written(resp.write_eof(done), write_timeout_s)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ndjson", handle)
    app.router.add_post("/ndjson", handle)
