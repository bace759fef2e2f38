"""One-shot server half: the whole answer in one response once generation has ended,
written in pieces of at most WRITE_CHUNK_BYTES (never one bytes object of the whole answer)."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web

from streams.hub import Token
from transports.longpoll import batch_frame
from transports.web.common import COUNTERS, chunk_end, open_stream, request_values, send_body

KEY = "oneshot"


async def handle(request: web.Request) -> web.StreamResponse:
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
    head, tail = batch_frame(stream.id, stream.last_seq, True, stream.reason)
    # the bytes encode_batch would give: the frame, the payloads and the commas between them
    length = len(head) + sum(len(t.payload) for t in tokens) + max(len(tokens) - 1, 0) + len(tail)
    resp = web.StreamResponse(headers={"Cache-Control": "no-store", "X-Pushlab-Stream": stream.id})
    resp.content_type = "application/json"
    resp.content_length = length
    counters["tokens_sent"] += len(tokens)
    counters["bytes_sent"] += length
    return await send_body(request, resp, _parts(head, tokens, tail), counters)


def _parts(head: bytes, tokens: list[Token], tail: bytes) -> Iterator[bytes]:
    """A batch's bytes (transports/longpoll.py `encode_batch`) one write-sized piece at a time."""
    yield head
    start = 0
    while start < len(tokens):
        end = chunk_end(tokens, start)
        payloads = [t.payload for t in tokens[start:end]]
        yield b",".join(payloads if start == 0 else [b"", *payloads])  # a comma between pieces
        start = end
    yield tail


def add_routes(app: web.Application) -> None:
    app.router.add_get("/oneshot", handle)
    app.router.add_post("/oneshot", handle)
