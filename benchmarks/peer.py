"""The peer reference: the usual Python stack for token streaming, FastAPI + sse-starlette on
uvicorn, serving the same SSE bytes as the bare aiohttp reference (`benchmarks/bare.py`).

    python benchmarks/peer.py --host 127.0.0.1 --port 0 [--uvloop] [--gc auto|scheduled]

Only `GET /sse` (the issue asks for this stack as a second reference on SSE). For the same
query (`tokens`, `rate`, `ttft_ms`) it paces itself as bare.py does (one `asyncio.sleep` per
token until it is due) and yields each token as sse-starlette's dict event with `sep="\\n"`,
so the library encodes `id: <stream>:<seq>\\ndata: <token>\\n\\n`, byte for byte what bare.py
writes; the opening `retry:`/`id:` block is yielded as bytes because sse-starlette would put
`id:` before `retry:`. Tokens are stamped (`t_emit_ns`) when the generator yields them, as
bare.py stamps them when it writes. sse-starlette's own ping (a comment every 15 s) stays on
as the library ships it: the benchmark's streams end long before it fires.

uvicorn runs with `--loop uvloop` (with `--uvloop`), httptools as its HTTP parser, no access
log, on a socket bound here so that `--port 0` works; the GC policies are bare.py's. It
prints pushlab's ready line once uvicorn listens and stops on SIGTERM. It imports nothing
from pushlab: like bare.py, it is what pushlab is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse

GC_FULL_INTERVAL_S = 30.0  # as server.py's and bare.py's "scheduled" policy
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

app = FastAPI()


def token(stream: str, seq: int, t_emit_ns: int) -> str:
    """bare.py's token object with the fixed text " word"."""
    return f'{{"stream":"{stream}","seq":{seq},"t_emit_ns":{t_emit_ns},"text":" word"}}'


async def events(sid: bytes, tokens: int, rate: float, ttft_s: float) -> AsyncIterator[object]:
    loop = asyncio.get_running_loop()
    yield b"retry: 1000\nid: %s:0\n\n" % sid
    start = loop.time() + ttft_s
    name = sid.decode()
    for i in range(tokens):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        seq = i + 1
        yield {"id": f"{name}:{seq}", "data": token(name, seq, time.time_ns())}
    yield {"data": "[DONE]"}


@app.get("/sse")
async def sse(request: Request) -> EventSourceResponse:
    q = request.query_params
    tokens, rate = int(q.get("tokens", 64)), float(q.get("rate", 20))
    ttft_s = float(q.get("ttft_ms", 200)) / 1e3
    sid = os.urandom(6).hex().encode()
    return EventSourceResponse(
        events(sid, tokens, rate, ttft_s),
        headers={**HEADERS, "X-Pushlab-Stream": sid.decode()},
        media_type="text/event-stream; charset=utf-8",
        sep="\n",
    )


async def collect_forever() -> None:
    while True:
        await asyncio.sleep(GC_FULL_INTERVAL_S)
        gc.collect()


async def serve(host: str, port: int, use_uvloop: bool, gc_policy: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        loop="uvloop" if use_uvloop else "asyncio",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    collector = None
    if gc_policy == "scheduled":  # the same policy as server.py --gc scheduled
        gc.collect()
        gc.freeze()
        gc.disable()
        collector = asyncio.create_task(collect_forever())
    print(f"pushlab serving on http://{host}:{port}", flush=True)
    await serving  # uvicorn handles SIGTERM itself: it stops serving and returns
    if collector is not None:
        collector.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FastAPI + sse-starlette reference for benchmarks.")
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
    asyncio.run(serve(args.host, args.port, args.uvloop, args.gc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
