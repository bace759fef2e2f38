"""A reader that stops reading costs the server a bounded number of bytes and, after
`write_timeout_s`, its connection (issue 14).

A real server in the test's event loop and a raw socket client with a 4 KiB receive buffer;
the server side of each connection gets a small kernel send buffer (so a stall reaches
asyncio's buffer at once), and its transport's writes are watched: the most bytes its
buffer ever held after a write is what the bounds are checked against. Before the bounds, a
reader resuming a finished 20,000-token stream had the whole ~2 MB backlog put in that
buffer by one write, and a reader that never read held its connection for good.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server import make_app
from streams.hub import Stream
from tests.support import UNIT, wait_until_async
from transports.longpoll import decode_batch
from transports.web.common import COUNTERS, HUB, WRITE_CHUNK_BYTES, ServerConfig
from transports.web.poll import MAX_BATCH_BYTES

TOKENS = 20_000
FAST = {"tokens": TOKENS, "rate": 100_000, "ttft_ms": 0, "seed": 5}
RCVBUF_BYTES = 4096
SNDBUF_BYTES = 16 * 1024
# asyncio's default high-water mark (64 KiB) + aiohttp's drain threshold (64 KiB) + one
# chunk with its framing: what a chunked writer can have buffered at most, with room to spare
# (the whole backlog, before: ~2.3 MB of SSE)
MAX_BUFFERED_BYTES = 64 * 1024 + 64 * 1024 + 2 * WRITE_CHUNK_BYTES


@dataclasses.dataclass
class Server:
    runner: web.AppRunner
    port: int

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counters(self, key: str) -> dict[str, int]:
        return self.app[COUNTERS].by_transport[key]

    async def stream(self, stream_id: str) -> Stream:
        return await self.app[HUB].get(stream_id)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = ServerConfig(host="127.0.0.1", port=0, write_timeout_s=0.5 * UNIT, heartbeat_s=0)
    runner = web.AppRunner(make_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield Server(runner, runner.addresses[0][1])
    await runner.cleanup()


class Watched:
    """The server side of one connection: the most bytes its transport ever buffered."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.max_buffered_bytes = transport, 0
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        self._wrap("write")
        self._wrap("writelines")

    def _wrap(self, name: str) -> None:
        original: Callable[[Any], None] = getattr(self.transport, name)

        def watched(data: Any) -> None:
            original(data)
            self.max_buffered_bytes = max(
                self.max_buffered_bytes, self.transport.get_write_buffer_size()
            )

        setattr(self.transport, name, watched)  # an instance attribute hides the method


async def connect(server: Server) -> tuple[socket.socket, Watched]:
    """A raw client socket with a small receive buffer, and the server's side of it."""
    server_side = server.runner.server
    assert server_side is not None
    before = set(server_side.connections)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)  # before connect
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    handler = await wait_until_async(
        lambda: next(iter(set(server_side.connections) - before), None),
        what="the server accepted the connection",
    )
    assert handler is not None and handler.transport is not None
    return sock, Watched(handler.transport)


async def read_all(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything until the server ends the connection; whether it ended with a reset."""
    loop, chunks = asyncio.get_running_loop(), []
    try:
        async with asyncio.timeout(10 * UNIT):
            while chunk := await loop.sock_recv(sock, 65536):
                chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


async def create(server: Server, params: dict[str, Any]) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/longpoll", json=params) as resp,
    ):
        assert resp.status == 201
        return decode_batch(await resp.read()).stream


async def ndjson_tokens(server: Server, stream_id: str) -> int:
    """Resume `stream_id` from the start over NDJSON: how many token lines came."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/ndjson?stream={stream_id}&after=0") as resp,
    ):
        assert resp.status == 200
        lines = (await resp.read()).splitlines()
    return sum(1 for line in lines if b'"seq":' in line and b'"type"' not in line)


def http_get(server: Server, path: str) -> bytes:
    # Connection: close: the server ends the connection after the response (read_all's end)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n"
    return head.encode()


def ws_upgrade(server: Server, first_message: dict[str, Any]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    payload = json.dumps(first_message).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    # RFC 6455 section 5.2: FIN + text opcode, MASK bit + 7-bit length, masking key, data
    return head + bytes([0x81, 0x80 | len(payload)]) + mask + masked


REQUESTS = {
    "sse": lambda server, sid: http_get(server, f"/sse?stream={sid}&after=0"),
    "ndjson": lambda server, sid: http_get(server, f"/ndjson?stream={sid}&after=0"),
    "websocket": lambda server, sid: ws_upgrade(
        server, {"type": "resume", "stream": sid, "after": 0}
    ),
}


@pytest.mark.parametrize("key", list(REQUESTS))
async def test_a_reader_that_never_reads_is_closed_and_its_stream_kept(
    server: Server, key: str
) -> None:
    stream_id = await create(server, FAST)
    sock, watched = await connect(server)
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, REQUESTS[key](server, stream_id))
        await wait_until_async(
            lambda: server.counters(key)["write_timeouts"] == 1,
            timeout_units=10,
            what=f"the {key} connection was closed for not reading",
        )
        received, _ = await read_all(sock)  # ends: the server closed it
    assert watched.max_buffered_bytes <= MAX_BUFFERED_BYTES
    assert len(received) < TOKENS * 80  # far from all of it went out
    stream = await server.stream(stream_id)
    await wait_until_async(lambda: stream.done, what="the stream ended")
    assert stream.listeners == 0 and stream.reason == "done"  # not cancelled: resumable
    assert await ndjson_tokens(server, stream_id) == TOKENS


@pytest.mark.parametrize("key", list(REQUESTS))
async def test_a_long_backlog_is_written_one_chunk_at_a_time(server: Server, key: str) -> None:
    stream_id = await create(server, FAST)
    stream = await server.stream(stream_id)
    await wait_until_async(lambda: stream.done, what="the stream ended")  # all of it: backlog
    sock, watched = await connect(server)
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, REQUESTS[key](server, stream_id))
        received, reset = await read_all(sock) if key != "websocket" else await read_ws(sock)
    assert not reset
    assert received.count(b'"seq":') >= TOKENS  # every token came (the end marker too)
    assert watched.max_buffered_bytes <= MAX_BUFFERED_BYTES
    assert server.counters(key)["write_timeouts"] == 0


async def read_ws(sock: socket.socket) -> tuple[bytes, bool]:
    """Read a WebSocket response until its `done` message (the server keeps the socket)."""
    loop, data = asyncio.get_running_loop(), bytearray()
    async with asyncio.timeout(10 * UNIT):
        while b'"type":"done"' not in data[-4096:]:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "the server closed before `done`"
            data += chunk
    return bytes(data), False


async def test_a_poll_returns_at_most_the_cap_and_next_goes_on(server: Server) -> None:
    stream_id = await create(server, FAST)
    stream = await server.stream(stream_id)
    await wait_until_async(lambda: stream.done, what="the stream ended")
    total = sum(len(t.payload) for t in stream.since(0))
    assert total > MAX_BATCH_BYTES  # the whole backlog does not fit in one poll
    seqs: list[int] = []
    after, polls = 0, 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{server.url}/shortpoll/{stream_id}?after={after}") as resp:
                body = await resp.read()
            batch = decode_batch(body)
            polls += 1
            assert len(body) <= MAX_BATCH_BYTES + 1024  # the cap, plus the batch's frame
            assert batch.next == after + len(batch.tokens) and batch.tokens
            seqs.extend(t.seq for t in batch.tokens)
            after = batch.next
            if batch.done:
                break
    assert seqs == list(range(1, TOKENS + 1))
    assert polls >= 2


async def test_one_shot_sends_the_same_body_in_pieces(server: Server) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/oneshot", json={**FAST, "tokens": 3000}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(body)
    batch = decode_batch(body)  # valid JSON, commas between the pieces included
    assert [t.seq for t in batch.tokens] == list(range(1, 3001)) and batch.done
    assert len(body) > 2 * WRITE_CHUNK_BYTES  # more than one piece was written


def v1_post(server: Server, stream: bool, tokens: int) -> bytes:
    body = json.dumps({"model": "lab", "messages": [{"role": "user", "content": "hi"}],
                       "stream": stream, **FAST, "tokens": tokens}).encode()  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize(("stream", "tokens"), [(True, TOKENS), (False, 100_000)])
async def test_a_v1_reader_that_never_reads_is_closed(
    server: Server, stream: bool, tokens: int
) -> None:
    # a whole answer of 100,000 tokens is a ~0.5 MB body: more than the buffers take
    sock, watched = await connect(server)
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, v1_post(server, stream, tokens))
        await wait_until_async(
            lambda: server.counters("openai")["write_timeouts"] == 1,
            timeout_units=10,
            what="the /v1 connection was closed for not reading",
        )
        await read_all(sock)  # ends: the server closed it
    assert watched.max_buffered_bytes <= MAX_BUFFERED_BYTES


async def test_a_one_shot_reader_that_never_reads_is_closed(server: Server) -> None:
    body = json.dumps(FAST).encode()  # a ~1.6 MB answer
    request = (
        f"POST /oneshot HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock, watched = await connect(server)
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, request)
        await wait_until_async(
            lambda: server.counters("oneshot")["write_timeouts"] == 1,
            timeout_units=10,
            what="the one-shot connection was closed for not reading",
        )
        await read_all(sock)
    assert watched.max_buffered_bytes <= MAX_BUFFERED_BYTES
