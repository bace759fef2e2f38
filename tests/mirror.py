"""A throw-away transport, "mirror", that exists only while a test registers it.

Its halves are small and new: a server half at `GET|POST /mirror` that writes NDJSON's
lines (transports/ndjson.py, the pump of transports/web/ndjson.py) under its own counters,
and a client half that reads them. `with registered(MIRROR):` makes it a registry entry and
nothing else: whatever then treats it as a transport got there through the registry.
"""

from __future__ import annotations

from aiohttp import web

from clients.base import Client, expect, request_for
from clients.http import HTTPClient
from clients.recorder import StreamRecord
from streams.errors import TransportError
from streams.params import GenParams
from transports.ndjson import LineSplitter, parse_line
from transports.registry import Transport, registered
from transports.token import TokenRecord
from transports.web import ndjson as ndjson_half
from transports.web.common import (
    CONFIG,
    COUNTERS,
    open_stream,
    request_values,
    serve_stream,
    streaming_headers,
)
from transports.websocket import Done, Started

KEY = "mirror"
PATH = "/mirror"

MIRROR = Transport(
    KEY,
    "Mirror",
    "A test-only transport: NDJSON lines at /mirror",
    "transports.ndjson",
    "tests.mirror",
    "tests.mirror:MirrorClient",
    order=99,
    colour="#7f7f7f",  # grey: no built-in or fallback colour
    resumable=True,
    cancel="request",
    requests_per_answer="one",
)

__all__ = ["KEY", "MIRROR", "MirrorClient", "add_routes", "registered"]


async def handle(request: web.Request) -> web.StreamResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    stream, after = await open_stream(request, await request_values(request))
    config = request.app[CONFIG]
    resp = web.StreamResponse(headers=streaming_headers(config, "application/x-ndjson", stream))
    return await serve_stream(
        request,
        resp,
        stream,
        counters,
        lambda: ndjson_half.pump(resp, stream, after, config.heartbeat_s, counters),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, handle)
    app.router.add_post(PATH, handle)


class MirrorClient(Client):
    key = KEY

    async def attempt(self, http: HTTPClient, params: GenParams, rec: StreamRecord) -> str:
        if rec.stream_id:  # resume: the same stream, after the last seq held
            method, after = "GET", rec.last_seq - self.part_offset
            target, body = f"{PATH}?stream={rec.stream_id}&after={after}", b""
        else:
            method = self.options.method
            target, body = request_for(PATH, params, method)
        rec.request_sent()
        resp = await http.request(method, target, [("Accept", "application/x-ndjson")], body)
        await expect(http, resp, 200, "application/x-ndjson")
        conn = http.conn
        assert conn is not None
        lines = LineSplitter()
        async for chunk in http.body():
            for line in lines.feed(chunk):
                item = parse_line(line)
                if isinstance(item, TokenRecord):
                    t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
                    self.deliver(rec, item, t_ns, t_perf, http.requests - 1)
                elif isinstance(item, Started):
                    rec.stream_id = rec.stream_id or item.stream
                elif isinstance(item, Done):
                    return item.reason
        raise TransportError("response ended before the done line")
