"""SSE server half: `GET /sse` (EventSource) and `POST /sse` (fetch-style clients).

Wire format in docs/PROTOCOL.md; bytes come from the sans-I/O codec in transports/sse.py.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from streams.errors import ParamError
from streams.hub import Stream, Token
from transports import sse
from transports.token import dumps
from transports.web.common import (
    CONFIG,
    COUNTERS,
    HUB,
    deliver,
    open_stream,
    owner_of,
    request_values,
    serve_stream,
    streaming_headers,
    written,
)

KEY = "sse"
_SEQ = re.compile(r"[0-9]{1,18}")


def parse_last_event_id(value: str) -> tuple[str, int]:
    """`<stream>:<seq>` from a reconnecting EventSource's Last-Event-ID header."""
    stream_id, sep, seq = value.strip().rpartition(":")
    # ASCII digits only: "²".isdigit() is True but int("²") fails (it was a 500); 18 digits
    # hold any seq a stream can reach
    if not sep or not stream_id or not _SEQ.fullmatch(seq):
        shown = repr(value) if len(value) <= 64 else repr(value[:60]) + "..."
        raise ParamError(
            f"Last-Event-ID must be '<stream>:<seq>', got {shown}", param="Last-Event-ID"
        )
    return stream_id, int(seq)


async def handle(request: web.Request) -> web.StreamResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    values = await request_values(request)
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:
        stream_id, after = parse_last_event_id(last_event_id)
        stream = await request.app[HUB].readable(stream_id, after, owner=owner_of(request))
        if after > stream.params.tokens:
            raise ParamError(
                f"Last-Event-ID seq {after} is beyond the stream's end", param="Last-Event-ID"
            )
        if stream.done and after >= stream.last_seq:
            # WHATWG SSE: a 204 response makes EventSource stop reconnecting for good.
            return web.Response(status=204, headers={"X-Pushlab-Stream": stream.id})
    else:
        stream, after = await open_stream(request, values)
    config = request.app[CONFIG]
    resp = web.StreamResponse(
        headers=streaming_headers(config, "text/event-stream; charset=utf-8", stream)
    )
    return await serve_stream(
        request,
        resp,
        stream,
        counters,
        lambda: pump(
            resp,
            stream,
            after,
            config.retry_ms,
            config.heartbeat_s,
            counters,
            config.write_timeout_s,
        ),
    )


async def pump(
    resp: web.StreamResponse,
    stream: Stream,
    after: int,
    retry_ms: int,
    heartbeat_s: float,
    counters: dict[str, int],
    write_timeout_s: float = 0.0,
) -> None:
    """Write the stream's tokens after `after` as they appear, then the end marker;
    WriteTimeout when a write waits `write_timeout_s` (0: no limit) for the socket."""
    first = sse.encode_open(stream.id, after, retry_ms)
    await written(resp.write(first), write_timeout_s)
    counters["bytes_sent"] += len(first)
    sid, keep_alive, encode = stream.id, sse.encode_comment("keep-alive"), sse.encode_token

    def write(batch: list[Token]) -> Coroutine[Any, Any, None]:
        # often run by the hub's emitting callback itself (common.deliver): keep it plain
        if len(batch) == 1:
            token = batch[0]
            data = encode(sid, token.seq, token.payload)
        elif batch:
            data = b"".join([encode(sid, t.seq, t.payload) for t in batch])
        else:
            data = keep_alive
        counters["tokens_sent"] += len(batch)
        counters["bytes_sent"] += len(data)
        return resp.write(data)

    await deliver(stream, after, write, heartbeat_s, write_timeout_s)
    end = b""
    if stream.reason != "done":
        info = dumps(
            {"stream": stream.id, "seq": stream.last_seq, "reason": stream.reason}
        ).decode()
        end = sse.encode_event(info, event="cancelled")
    end += sse.DONE
    await written(resp.write_eof(end), write_timeout_s)
    counters["bytes_sent"] += len(end)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sse", handle)
    app.router.add_post("/sse", handle)
