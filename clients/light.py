"""The light reader: one stream read with the least CPU per token, for load at scale.

pushlab's Python clients (`clients.<key>`) parse every token fully (h11, the SSE parser,
JSON) and cost 66-89 us of CPU per token (measured at 300 streams x 20 tokens/s against both
servers): at 20,000 to 50,000 tokens/s they would need more cores than this 2-core machine
has, and the numbers would describe the load generator. The light reader only finds each
token's `"seq":N,"t_emit_ns":T,` in the bytes with one regular expression per socket read
and stamps the read's `time.time_ns()`, as pushlab's clients do, so the server stays the
bottleneck. Delivery is checked per stream (every seq 1..N once); latency is receive time
minus emit time. `FleetPool.run_light` (clients/fleet.py) runs thousands of them.

The bytes it sends come from the codecs (h11 for the request, `websockets` for the upgrade
and the frame, `transports.websocket` for the start message), so they are the clients'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from array import array
from typing import cast

import h11
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from clients.base import Target, request_for
from streams.params import GenParams
from transports import sse
from transports import websocket as ws_codec

TOKEN_RE = re.compile(rb'"seq":(\d+),"t_emit_ns":(\d+),')  # the comma: the number is whole
END_MARK = {"sse": sse.DONE.strip(), "websocket": b'"type":"done"'}
PATH = {"sse": "/sse", "ndjson": "/ndjson", "websocket": "/ws"}


def request_bytes(target: Target, transport: str, params: GenParams, *, close: bool) -> bytes:
    """The HTTP/1.1 request that opens a stream (a WebSocket upgrade for `websocket`);
    `close` asks the server to close the connection after the response."""
    if transport == "websocket":
        proto = ClientProtocol(parse_uri(f"ws://{target.host}:{target.port}{PATH[transport]}"))
        proto.send_request(proto.connect())
        return b"".join(proto.data_to_send())
    path, _ = request_for(PATH[transport], params, "GET")
    headers = [("Host", f"{target.host}:{target.port}")]
    if close:
        headers.append(("Connection", "close"))
    data = h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target=path, headers=headers))
    assert data is not None  # h11 returns the bytes of a request head
    return data


def start_message(params: GenParams) -> bytes:
    """The WebSocket `start` message as a masked client text frame (RFC 6455 section 5.3)."""
    frame = Frame(Opcode.TEXT, ws_codec.encode_start(params).encode())
    return frame.serialize(mask=True, extensions=[])


@dataclasses.dataclass
class LightRecord:
    """One stream as the light reader saw it; the array fields match `StreamRecord`'s."""

    tokens_expected: int
    seq: array = dataclasses.field(default_factory=lambda: array("q"))
    t_emit_ns: array = dataclasses.field(default_factory=lambda: array("q"))
    t_recv_ns: array = dataclasses.field(default_factory=lambda: array("q"))
    connection: array = dataclasses.field(default_factory=lambda: array("q"))
    t_start_ns: int = 0  # time.time_ns() when it started connecting (the schedule's origin)
    t_start_perf_ns: int = 0  # connecting
    t_connected_perf_ns: int = 0  # the TCP connection is up, the request goes out
    t_head_perf_ns: int = 0  # the response head arrived
    t_end_perf_ns: int = 0
    bytes_down: int = 0
    error: str = ""


class _TokenReader(asyncio.Protocol):
    def __init__(self, rec: LightRecord, transport: str, start: bytes) -> None:
        self.rec, self.end_mark, self.start = rec, END_MARK[transport], start
        self.carry = b""
        self.answered = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        t_ns, rec = time.time_ns(), self.rec
        rec.bytes_down += len(data)
        data = self.carry + data
        if not self.answered and b"\r\n\r\n" in data:
            self.answered = True
            rec.t_head_perf_ns = time.perf_counter_ns()
            if data[9:12] not in (b"200", b"101"):
                rec.error = data.split(b"\r\n", 1)[0].decode("latin-1")
                self.transport.close()
            elif self.start:
                self.transport.write(self.start)
        end = 0
        for match in TOKEN_RE.finditer(data):
            rec.seq.append(int(match[1]))
            rec.t_emit_ns.append(int(match[2]))
            rec.t_recv_ns.append(t_ns)
            end = match.end()
        self.carry = data[max(end, len(data) - 256) :]
        if self.end_mark in data and not self.ended.done():
            rec.t_end_perf_ns = time.perf_counter_ns()
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            if not self.rec.t_end_perf_ns:
                self.rec.error = self.rec.error or f"connection closed early ({exc})"
            self.ended.set_result(None)


async def read_stream(target: Target, transport: str, params: GenParams, rec: LightRecord) -> None:
    """Open one stream (`sse` or `websocket`), read it to its end mark, close."""
    loop = asyncio.get_running_loop()
    start = start_message(params) if transport == "websocket" else b""
    request = request_bytes(target, transport, params, close=False)
    rec.t_start_ns, rec.t_start_perf_ns = time.time_ns(), time.perf_counter_ns()
    try:
        conn, reader = await loop.create_connection(
            lambda: _TokenReader(rec, transport, start), target.host, target.port
        )
    except OSError as exc:
        rec.error = f"connect: {exc}"
        return
    rec.t_connected_perf_ns = time.perf_counter_ns()
    conn.write(request)
    await reader.ended
    conn.close()
