"""Minimal readers for what pushlab's Python clients cannot do fast or cheaply enough.

`drink()` reads one unpaced stream as fast as the kernel hands it over and counts the tokens
in the bytes afterwards (single-connection throughput: the server, not the reader, must be
the bottleneck). `IdleConnections` opens N streams that send nothing yet and holds them
(idle memory). Both speak the wire format of docs/PROTOCOL.md, so they work the same against
pushlab, the bare aiohttp reference and the raw asyncio one; the bytes they send come from
the codecs (`clients.light.request_bytes`, `start_message`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import cast

from clients.base import Target
from clients.light import request_bytes, start_message
from streams.params import GenParams
from transports import registry

# What one token looks like in each transport's bytes (token objects carry "t_emit_ns").
TOKEN_MARK = {
    "sse": b"\ndata: {",
    "ndjson": b'"t_emit_ns":',
    "websocket": b'"type":"token"',
}
OPENED_MARK = {"sse": b"retry:", "ndjson": b'"type":"started"', "websocket": b'"type":"started"'}
DONE_MARK = b'"type":"done"'  # the end of a WebSocket stream (SSE and NDJSON: the server closes)


@dataclasses.dataclass(frozen=True)
class Drink:
    """One stream read to its end: tokens counted in the bytes, wall and reader CPU time."""

    tokens: int
    bytes_down: int
    wall_s: float
    reader_cpu_s: float


class _Reader(asyncio.Protocol):
    """Collects every byte; `opened` once `opened_mark` was seen, `ended` at EOF or `end_mark`."""

    def __init__(self, opened_mark: bytes, end_mark: bytes | None, start: bytes) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.opened_mark, self.end_mark, self.start = opened_mark, end_mark, start
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[float] = loop.create_future()
        self._tail = b""
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        window = self._tail + data
        self._tail = data[-64:]
        if not self._answered and b"\r\n\r\n" in window:
            self._answered = True
            self._check_status()
            if self.start:
                self.transport.write(self.start)  # the WebSocket start message, after the 101
        if not self.opened.done() and self.opened_mark in window:
            self.opened.set_result(None)
        if self.end_mark and self.end_mark in window and not self.ended.done():
            self.ended.set_result(time.perf_counter())

    def _check_status(self) -> None:
        status_line = b"".join(self.chunks).split(b"\r\n", 1)[0]
        if status_line.split(b" ")[1:2] not in ([b"200"], [b"101"]):
            error = ConnectionError(f"server answered {status_line.decode('latin-1')!r}")
            for fut in (self.opened, self.ended):
                if not fut.done():
                    fut.set_exception(error)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(time.perf_counter())
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the stream opened"))

    def data(self) -> bytes:
        return b"".join(self.chunks)


async def _open(target: Target, transport: str, params: GenParams, close: bool) -> _Reader:
    loop = asyncio.get_running_loop()
    ws = registry.get(transport).connection == "upgraded"  # a WebSocket: send `start`
    end = DONE_MARK if ws else None
    _, reader = await loop.create_connection(
        lambda: _Reader(OPENED_MARK[transport], end, start_message(params) if ws else b""),
        target.host,
        target.port,
    )
    reader.transport.write(request_bytes(target, transport, params, close=close))
    return reader


async def drink(target: Target, transport: str, params: GenParams) -> Drink:
    """Read one stream to its end (`transport` is sse, ndjson or websocket)."""
    cpu0, t0 = time.thread_time(), time.perf_counter()
    reader = await _open(target, transport, params, close=True)
    t_end = await reader.ended
    cpu = time.thread_time() - cpu0
    reader.transport.close()
    data = reader.data()
    return Drink(data.count(TOKEN_MARK[transport]), len(data), t_end - t0, cpu)


class IdleConnections:
    """N open streams whose first token is far away: each has seen its opening bytes."""

    def __init__(self) -> None:
        self.readers: list[_Reader] = []

    async def open(
        self, target: Target, transport: str, params: GenParams, n: int, batch: int = 100
    ) -> None:
        """Open `n` streams, `batch` at a time, each until the server has answered it."""
        for first in range(0, n, batch):
            opened = [
                await _open(target, transport, params, close=False)
                for _ in range(min(batch, n - first))
            ]
            async with asyncio.timeout(30):
                await asyncio.gather(*(r.opened for r in opened))
            self.readers += opened

    def close(self) -> None:
        for reader in self.readers:
            reader.transport.close()
        self.readers = []
