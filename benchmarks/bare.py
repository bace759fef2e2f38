"""Bare reference servers: the least code that speaks pushlab's wire format (docs/PROTOCOL.md).

    python benchmarks/bare.py --kind aiohttp|raw --host 127.0.0.1 --port 0 [--uvloop]
                              [--gc auto|scheduled]

`aiohttp`: `/sse`, `/ws`, `/ndjson`, `/longpoll` and `/longpoll/{id}` as plain aiohttp
handlers. No hub, no producer task, no validation beyond int()/float(): each connection
paces itself with one `asyncio.sleep` per token until that token is due
(`ttft_ms + (seq - 1) / rate` after the request), and every token's text is " word".
Long polling keeps `{id: schedule}` and computes which tokens are due from the clock.

`raw`: one `asyncio.Protocol` that answers any request with an HTTP/1.1 200 event-stream
head and then writes `tokens` SSE events (default 64) as fast as the transport's flow
control allows, and closes: the write-plus-drain ceiling of asyncio on this machine.

Both print pushlab's ready line and stop on SIGTERM. This file imports nothing from pushlab,
so that it stays the reference pushlab is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import cast

from aiohttp import WSMsgType, web

GC_FULL_INTERVAL_S = 30.0  # as server.py's "scheduled" policy
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def new_id() -> bytes:
    return os.urandom(6).hex().encode()


def token(stream: bytes, seq: int, t_emit_ns: int) -> bytes:
    """The token object of docs/PROTOCOL.md with the fixed text " word"."""
    return b'{"stream":"%s","seq":%d,"t_emit_ns":%d,"text":" word"}' % (stream, seq, t_emit_ns)


def schedule(values: Mapping[str, object]) -> tuple[int, float, float]:
    """(tokens, rate, ttft_s) from a query or a JSON object, with the protocol's defaults."""
    tokens = int(values.get("tokens", 64))  # type: ignore[call-overload]
    rate = float(values.get("rate", 20))  # type: ignore[arg-type]
    return tokens, rate, float(values.get("ttft_ms", 200)) / 1e3  # type: ignore[arg-type]


async def paced(tokens: int, rate: float, ttft_s: float) -> AsyncIterator[int]:
    """Seqs 1..tokens, each once it is due; no sleep for a token already due."""
    loop = asyncio.get_running_loop()
    start = loop.time() + ttft_s
    for i in range(tokens):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i + 1


async def sse(request: web.Request) -> web.StreamResponse:
    tokens, rate, ttft_s = schedule(request.query)
    sid = new_id()
    resp = web.StreamResponse(
        headers={
            **HEADERS,
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Pushlab-Stream": sid.decode(),
        }
    )
    await resp.prepare(request)
    await resp.write(b"retry: 1000\nid: %s:0\n\n" % sid)
    async for seq in paced(tokens, rate, ttft_s):
        await resp.write(b"id: %s:%d\ndata: %s\n\n" % (sid, seq, token(sid, seq, time.time_ns())))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def ndjson(request: web.Request) -> web.StreamResponse:
    tokens, rate, ttft_s = schedule(request.query)
    sid = new_id()
    resp = web.StreamResponse(
        headers={
            **HEADERS,
            "Content-Type": "application/x-ndjson",
            "X-Pushlab-Stream": sid.decode(),
        }
    )
    await resp.prepare(request)
    await resp.write(b'{"type":"started","stream":"%s","after":0}\n' % sid)
    async for seq in paced(tokens, rate, ttft_s):
        await resp.write(token(sid, seq, time.time_ns()) + b"\n")
    await resp.write(b'{"type":"done","stream":"%s","seq":%d,"reason":"done"}\n' % (sid, tokens))
    await resp.write_eof()
    return resp


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    msg = await sock.receive()
    if msg.type == WSMsgType.TEXT:
        tokens, rate, ttft_s = schedule(json.loads(msg.data))
        sid, text = new_id(), WSMsgType.TEXT
        await sock.send_frame(b'{"type":"started","stream":"%s","after":0}' % sid, text)
        async for seq in paced(tokens, rate, ttft_s):
            await sock.send_frame(b'{"type":"token",' + token(sid, seq, time.time_ns())[1:], text)
        done = b'{"type":"done","stream":"%s","seq":%d,"reason":"done"}' % (sid, tokens)
        await sock.send_frame(done, text)
        await sock.receive()  # the client's close
    await sock.close()
    return sock


# long polling: id -> (loop time of token 1, time.time_ns() then, tokens, rate)
POLLED: dict[bytes, tuple[float, int, int, float]] = {}


def batch(sid: bytes, next_seq: int, done: bool, tokens: list[bytes], status: int) -> web.Response:
    body = b'{"stream":"%s","next":%d,"done":%s,"reason":"%s","tokens":[%s]}' % (
        sid,
        next_seq,
        b"true" if done else b"false",
        b"done" if done else b"",
        b",".join(tokens),
    )
    return web.Response(body=body, status=status, content_type="application/json")


async def longpoll_create(request: web.Request) -> web.Response:
    values = {**request.query, **(await request.json() if request.can_read_body else {})}
    tokens, rate, ttft_s = schedule(values)
    sid = new_id()
    now = asyncio.get_running_loop().time()
    POLLED[sid] = (now + ttft_s, time.time_ns() + int(ttft_s * 1e9), tokens, rate)
    return batch(sid, 0, False, [], 201)


async def longpoll(request: web.Request) -> web.Response:
    sid = request.match_info["stream"].encode()
    first_s, first_ns, tokens, rate = POLLED[sid]
    after = int(request.query.get("after", 0))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(request.query.get("wait", 25))
    due = min(tokens, int((loop.time() - first_s) * rate) + 1 if loop.time() >= first_s else 0)
    while due <= after < tokens and loop.time() < deadline:
        await asyncio.sleep(min(first_s + after / rate, deadline) - loop.time())
        due = min(tokens, int((loop.time() - first_s) * rate) + 1 if loop.time() >= first_s else 0)
    due = max(due, after)
    sent = [token(sid, s, first_ns + int((s - 1) / rate * 1e9)) for s in range(after + 1, due + 1)]
    if due >= tokens:
        POLLED.pop(sid, None)
    return batch(sid, due, due >= tokens, sent, 200)


class RawSSE(asyncio.Protocol):
    """Any request -> an event-stream head, `tokens` events written as fast as the transport's
    flow control allows (pause_writing/resume_writing), `data: [DONE]`, close."""

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )

    def __init__(self) -> None:
        self.request = b""
        self.task: asyncio.Task[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.request += data
        if self.task is None and b"\r\n\r\n" in self.request:
            found = re.search(rb"[?&]tokens=(\d+)", self.request.split(b"\r\n", 1)[0])
            self.task = asyncio.get_running_loop().create_task(
                self.stream(int(found.group(1)) if found else 64)
            )

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    async def stream(self, tokens: int) -> None:
        sid, write = new_id(), self.transport.write
        write(self.HEAD + b"retry: 1000\nid: %s:0\n\n" % sid)
        for seq in range(1, tokens + 1):
            write(b"id: %s:%d\ndata: %s\n\n" % (sid, seq, token(sid, seq, time.time_ns())))
            if self.writable is not None:
                await self.writable
        write(b"data: [DONE]\n\n")
        self.transport.close()


def aiohttp_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/sse", sse)
    app.router.add_get("/ndjson", ndjson)
    app.router.add_get("/ws", ws)
    app.router.add_post("/longpoll", longpoll_create)
    app.router.add_get("/longpoll/{stream}", longpoll)
    return app


async def collect_forever() -> None:
    while True:
        await asyncio.sleep(GC_FULL_INTERVAL_S)
        gc.collect()


async def serve(kind: str, host: str, port: int, gc_policy: str) -> None:
    loop = asyncio.get_running_loop()
    runner: web.AppRunner | None = None
    if kind == "aiohttp":  # the runner settings of server.py, so only the application differs
        runner = web.AppRunner(aiohttp_app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=4096).start()
        port = runner.addresses[0][1]
    else:
        server = await loop.create_server(RawSSE, host, port, backlog=4096)
        port = server.sockets[0].getsockname()[1]
    collector = None
    if gc_policy == "scheduled":  # the same policy as server.py --gc scheduled
        gc.collect()
        gc.freeze()
        gc.disable()
        collector = asyncio.create_task(collect_forever())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"pushlab serving on http://{host}:{port}", flush=True)
    await stop.wait()
    if collector is not None:
        collector.cancel()
    if runner is not None:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Bare reference servers for the benchmarks.")
    p.add_argument("--kind", choices=("aiohttp", "raw"), default="aiohttp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--gc", choices=("auto", "scheduled"), default="auto")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.kind, args.host, args.port, args.gc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
