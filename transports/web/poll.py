"""Long- and short-polling server halves: create a stream, then poll it with a cursor."""

from __future__ import annotations

from aiohttp import web

from streams.errors import ParamError
from streams.params import parse_number
from transports.longpoll import DEFAULT_WAIT_S, MAX_WAIT_S, encode_batch
from transports.web.common import (
    COUNTERS,
    HUB,
    checked_after,
    chunk_end,
    json_response,
    open_stream,
    owner_of,
    query_values,
    request_values,
)

# The most token bytes one poll returns (payloads counted as in common.chunk_end), so a poll
# far behind (a resume, a fast stream) never builds one response of the whole backlog. 1 MiB
# is ~13,000 tokens of ~80 bytes: a long poll over a 100 ms round trip at 20,000 tokens/s
# carries 2,000, so the cap never slows a paced stream down.
MAX_BATCH_BYTES = 1024 * 1024


def batch_response(body: bytes, status: int = 200, stream_id: str = "") -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Pushlab-Stream": stream_id},
    )


def make_handlers(key: str, hold: bool) -> tuple[web.RouteDef, ...]:
    """Routes for `key` ("longpoll" holds up to `wait` seconds, "shortpoll" never holds)."""

    async def create(request: web.Request) -> web.Response:
        counters = request.app[COUNTERS].by_transport[key]
        counters["requests"] += 1
        values = await request_values(request)
        if "stream" in values:
            raise ParamError(f"to resume, poll GET /{key}/{{stream}}?after=SEQ", param="stream")
        stream, _ = await open_stream(request, values)
        body = encode_batch(stream.id, [], 0, False, "")
        return batch_response(body, status=201, stream_id=stream.id)

    async def poll(request: web.Request) -> web.Response:
        counters = request.app[COUNTERS].by_transport[key]
        counters["requests"] += 1
        values = query_values(request)
        unknown = sorted(set(values) - {"after", "wait"})
        if unknown or ("wait" in values and not hold):
            bad = unknown[0][:64] if unknown else "wait"
            raise ParamError(f"unknown parameter '{bad}' for {key}", param=bad)
        owner = owner_of(request)
        stream = await request.app[HUB].readable(request.match_info["stream"], owner=owner)
        after = checked_after(values, stream)
        if after < stream.first_seq - 1:
            stream = await request.app[HUB].readable(stream.id, after, owner=owner)  # HistoryGone
        wait_s = parse_number(values, "wait", DEFAULT_WAIT_S, 0, MAX_WAIT_S) if hold else 0.0
        stream.touch()
        if wait_s > 0 and not stream.since(after) and not stream.done:
            counters["open"] += 1
            try:
                with stream.listening():
                    await stream.wait_beyond(after, wait_s)
            finally:
                counters["open"] -= 1
        tokens = stream.since(after)
        if tokens:  # at most MAX_BATCH_BYTES: the client polls again from `next` for the rest
            tokens = tokens[: chunk_end(tokens, 0, MAX_BATCH_BYTES)]
        next_seq = after + len(tokens)
        done = stream.done and next_seq >= stream.last_seq
        body = encode_batch(
            stream.id, [t.payload for t in tokens], next_seq, done, stream.reason if done else ""
        )
        counters["tokens_sent"] += len(tokens)
        counters["bytes_sent"] += len(body)
        return batch_response(body, stream_id=stream.id)

    return (
        web.post(f"/{key}", create),
        web.get(f"/{key}/{{stream}}", poll),
    )


def add_routes(app: web.Application) -> None:
    app.add_routes(make_handlers("longpoll", hold=True))
    app.add_routes(make_handlers("shortpoll", hold=False))


async def describe(request: web.Request) -> web.Response:
    """GET /streams/{stream}: the stream's state (for experiments and debugging)."""
    owner = owner_of(request)
    return json_response(await request.app[HUB].describe(request.match_info["stream"], owner=owner))


async def cancel(request: web.Request) -> web.Response:
    """DELETE /streams/{stream}: stop generating now (any transport's stream)."""
    hub, stream_id, owner = request.app[HUB], request.match_info["stream"], owner_of(request)
    await hub.cancel(stream_id, owner=owner)
    return json_response(await hub.describe(stream_id, owner=owner))


def add_stream_routes(app: web.Application) -> None:
    app.router.add_get("/streams/{stream}", describe)
    app.router.add_delete("/streams/{stream}", cancel)
