"""NDJSON server half: one JSON line per token over a chunked response."""

from __future__ import annotations

from aiohttp import web

from streams.hub import Stream
from transports import ndjson as codec
from transports.web.common import CONFIG, COUNTERS, open_stream, request_values, streaming_headers

KEY = "ndjson"


async def handle(request: web.Request) -> web.StreamResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    stream, after = open_stream(request, await request_values(request))
    config = request.app[CONFIG]
    resp = web.StreamResponse(headers=streaming_headers(config, "application/x-ndjson", stream))
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    counters["open"] += 1
    try:
        await pump(resp, stream, after, config.heartbeat_s, counters)
    except (ConnectionResetError, ConnectionError):
        counters["errors"] += 1
    finally:
        counters["open"] -= 1
    return resp


async def pump(
    resp: web.StreamResponse,
    stream: Stream,
    after: int,
    heartbeat_s: float,
    counters: dict[str, int],
) -> None:
    await resp.write(codec.encode_started(stream.id, after))
    sent = after
    with stream.listening():
        while True:
            batch = stream.since(sent)
            if batch:
                data = b"".join(codec.encode_line(t.payload) for t in batch)
                await resp.write(data)
                sent += len(batch)
                counters["tokens_sent"] += len(batch)
                counters["bytes_sent"] += len(data)
                continue
            if stream.done:
                break
            if not await stream.wait_beyond(sent, heartbeat_s or None):
                await resp.write(b"\n")  # an empty line: keep-alive, skipped by readers
    await resp.write(codec.encode_done(stream.id, stream.last_seq, stream.reason))
    await resp.write_eof()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ndjson", handle)
    app.router.add_post("/ndjson", handle)
