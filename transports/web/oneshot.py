"""One-shot server half: the whole answer in one response once generation has ended."""

from __future__ import annotations

from aiohttp import web

from transports.longpoll import encode_batch
from transports.web.common import COUNTERS, open_stream, request_values
from transports.web.poll import batch_response

KEY = "oneshot"


async def handle(request: web.Request) -> web.Response:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    stream, after = await open_stream(request, await request_values(request))
    counters["open"] += 1
    try:
        with stream.listening():
            while not stream.done:
                await stream.wait_beyond(stream.last_seq)
    finally:
        counters["open"] -= 1
    tokens = stream.since(after)
    body = encode_batch(
        stream.id, [t.payload for t in tokens], stream.last_seq, True, stream.reason
    )
    counters["tokens_sent"] += len(tokens)
    counters["bytes_sent"] += len(body)
    return batch_response(body, stream_id=stream.id)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/oneshot", handle)
    app.router.add_post("/oneshot", handle)
