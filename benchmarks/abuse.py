"""Benchmark `abuse`: issue 14's probes of one client against `server.py`, at the issue's
sizes, each against a fresh server child with default settings unless the probe names one.

Targets (issue 14, "Security: who may read a stream, and how much one client can take"): a
client that never reads costs the server at most 2 MB beyond kernel buffers and is closed
within the write timeout; total held-token memory never exceeds the budget; a /v1 response
is at most a small constant times the token text, whatever the request; with default
settings one client cannot make the server refuse another (fill, non-reader, slowloris).

| trial `benchmark` | probe (the attacker on 127.0.0.1) |
|---|---|
| `abuse_v1` | /v1 body bytes per token-text byte: a usual model name against 128-character ones |
| `abuse_nonreader` | 30 SSE or NDJSON streams, 100,000 tokens at 100,000/s, never read |
| `abuse_longpoll` | 20 `POST /longpoll` of 100,000 tokens at 100,000/s, never polled |
| `abuse_fill` | 20,000 creates of one token as fast as the client can |
| `abuse_slowloris` | 1,500 connections sending a request head a line a second |

Each trial records the server's RSS before, at its peak (the highest of VmRSS sampled every
0.1 s and VmHWM) and after, /stats figures (`benchmarks.abuse_net.summarize_stats`), and a
victim on 127.0.0.2 (`abuse_net.victim`: a few short SSE streams during the attack, and after
it for the fill). The sizes are `ISSUE`'s (the run takes about 5 minutes); `TOY` runs every
probe in about 15 s (tests).

What a never-reader costs: the streams' tokens stay held whether anyone reads them or not
(they are the budget's to bound), so each never-reader trial has a control on another fresh
server, the same streams read to their end by as many connections; the cost is the RSS growth
beyond the control's, the difference of the hub's held bytes removed. Socket buffers are
kernel memory, outside RSS: the server sockets' send queues (/proc/net/tcp `tx_queue`) are
recorded beside it (`queue_peak_bytes`), not subtracted from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from benchmarks.abuse_net import ATTACKER, Sampler, memory_figures, settled_rss, victim
from harness.children import ServerProcess
from harness.procstat import foreign_cpu, foreign_delta_s
from transports.web.config import ServerConfig

Trial = dict[str, Any]
Record = Callable[[Trial, Callable[[], Trial]], Trial]
DEFAULTS, CAPPED = "pushlab", "pushlab --max-streams 10"  # the sides: server settings
# /v1 models: a usual name, the longest accepted in ASCII, and in characters JSON escapes
# to 6 bytes each (U+0001 -> \u0001), so the most bytes a 128-character name can echo
MODELS = {"usual": "gpt-4o-mini", "ascii128": "m" * 128, "escaped128": "\x01" * 128}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each probe is; ISSUE's are the issue's, TOY's a smoke test's."""

    v1_tokens: int = 200
    nonreaders: int = 30
    stream_tokens: int = 100_000
    stream_rate: float = 100_000.0
    rcvbuf_bytes: int = 4096  # the attacker's SO_RCVBUF: a window of a few KB
    capped_max_streams: int = 10
    longpolls: int = 20
    longpoll_watch_s: float = 10.0
    fill_creates: int = 20_000
    fill_workers: int = 16  # requests in flight at once (one keep-alive connection each)
    slowloris: int = 1500
    victims: int = 5
    write_timeout_s: float = 30.0  # the server's defaults, passed on so TOY can shorten them
    header_timeout_s: float = 10.0
    settle_s: float = 0.5  # before an RSS baseline, and before the victim comes
    nonreader_sides: tuple[str, ...] = (CAPPED, DEFAULTS)


ISSUE = Sizes()
TOY = Sizes(v1_tokens=20, nonreaders=3, stream_tokens=30_000, longpolls=3, longpoll_watch_s=1.0,
            fill_creates=200, fill_workers=4, slowloris=20, victims=2, write_timeout_s=1.0,
            header_timeout_s=1.0, settle_s=0.1, nonreader_sides=(DEFAULTS,))  # fmt: skip


@contextlib.contextmanager
def _server(sizes: Sizes, **settings: Any) -> Iterator[ServerProcess]:
    config = ServerConfig(write_timeout_s=sizes.write_timeout_s,
                          header_timeout_s=sizes.header_timeout_s, **settings)  # fmt: skip
    proc = ServerProcess(config=config)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _session(workers: int = 100) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0), limit=workers)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


# -- probe 1: /v1 response size -------------------------------------------------------------


async def _completion(s: aiohttp.ClientSession, url: str, model: str, stream: bool,
                      tokens: int) -> tuple[int, int]:  # fmt: skip
    """(body bytes, token-text bytes) of one chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "max_tokens": tokens, "ttft_ms": 0, "rate": 100_000}  # fmt: skip
    async with s.post(url, json=body) as resp:
        data = await resp.read()
    if not stream:
        return len(data), len(json.loads(data)["choices"][0]["message"]["content"].encode())
    text = 0
    for line in data.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text += len(choice["delta"].get("content", "").encode())
    return len(data), text


async def v1_sizes(port: int, sizes: Sizes) -> Trial:
    url = f"http://{ATTACKER}:{port}/v1/chat/completions"
    out: Trial = {"v1_tokens": sizes.v1_tokens}
    async with _session() as s:
        for name, model in MODELS.items():
            for mode in ("stream", "whole"):
                body, text = await _completion(s, url, model, mode == "stream", sizes.v1_tokens)
                out[f"{mode}_{name}_body_bytes"] = body
                out[f"{mode}_{name}_bytes_per_text_byte"] = body / text
        bad = {"model": "m" * 129, "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(url, json=bad) as resp:
            out["model129_status"] = resp.status
    ratios = [out[f"{m}_{n}_bytes_per_text_byte"] for m in ("stream", "whole") for n in MODELS]
    out["bytes_per_text_byte_max"] = max(ratios)
    out["model128_growth_max"] = max(
        out[f"{m}_{n}_bytes_per_text_byte"] / out[f"{m}_usual_bytes_per_text_byte"]
        for m in ("stream", "whole") for n in ("ascii128", "escaped128"))  # fmt: skip
    return out


def v1_trial(sizes: Sizes) -> Trial:
    with _server(sizes) as proc:
        return asyncio.run(v1_sizes(proc.target.port, sizes))


# -- probe 2: readers that never read -------------------------------------------------------


async def _never_reader(port: int, path: str, rcvbuf_bytes: int) -> socket.socket:
    """A connection that sends one GET and never reads (its receive buffer set small first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    sock.setblocking(False)
    sock.bind((ATTACKER, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (ATTACKER, port))
    head = f"GET {path} HTTP/1.1\r\nHost: {ATTACKER}:{port}\r\n\r\n"
    await loop.sock_sendall(sock, head.encode())
    return sock


def _peek_status(sock: socket.socket) -> int:
    """The status of the response waiting in `sock`, read with MSG_PEEK (nothing consumed,
    the window stays shut); 0 if nothing came."""
    try:
        head = sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return 0
    return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") and len(head) == 12 else 0


async def never_readers(proc: ServerProcess, sizes: Sizes, transport: str) -> Trial:
    port, n = proc.target.port, sizes.nonreaders
    await victim(port, 1)  # the code paths, before the baseline
    before, t0 = await settled_rss(proc.pid, sizes.settle_s), time.monotonic()
    path = f"/{transport}?tokens={sizes.stream_tokens}&rate={sizes.stream_rate:g}"
    with Sampler(proc.pid, port, t0) as sampler:
        socks = [await _never_reader(port, path, sizes.rcvbuf_bytes) for _ in range(n)]
        sampler.watch([s.getsockname()[1] for s in socks])
        await asyncio.sleep(2 * sizes.settle_s)
        statuses = [_peek_status(s) for s in socks]
        served = await victim(port, sizes.victims)
        deadline = time.monotonic() + sizes.write_timeout_s + 20.0
        while len(sampler.seen.gone_at) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        memory = await memory_figures(proc, sampler, before, sizes.settle_s)
    for sock in socks:
        sock.close()
    seen = sampler.seen
    stalled = [seen.gone_at[p] - seen.progress_at.get(p, 0.0) for p in seen.gone_at]
    return {"connections": n, "write_timeout_s": sizes.write_timeout_s,
            "status_200": statuses.count(200),
            "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses))},
            "closed": len(seen.gone_at), "closed_s_max": max(seen.gone_at.values(), default=0.0),
            "stall_to_close_s_max": max(stalled, default=float("nan")),
            "closed_late_s": max(stalled, default=float("nan")) - sizes.write_timeout_s,
            "queue_peak_bytes": seen.queue_peak_bytes,
            "rss_growth_per_conn_bytes": (memory["rss_peak_bytes"] - before) / n,
            **memory, **served}  # fmt: skip


async def _reader(port: int, path: str) -> int:
    """A connection that sends one GET and reads the whole response (dropped): its bytes."""
    reader, writer = await asyncio.open_connection(ATTACKER, port, local_addr=(ATTACKER, 0))
    head = f"GET {path} HTTP/1.1\r\nHost: {ATTACKER}:{port}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode())
    total = 0
    while chunk := await reader.read(1 << 16):
        total += len(chunk)
    writer.close()
    return total


async def readers(proc: ServerProcess, sizes: Sizes, transport: str) -> Trial:
    """The control: the same streams, read to their end by as many connections."""
    port = proc.target.port
    await victim(port, 1)
    before, t0 = await settled_rss(proc.pid, sizes.settle_s), time.monotonic()
    path = f"/{transport}?tokens={sizes.stream_tokens}&rate={sizes.stream_rate:g}"
    with Sampler(proc.pid, port, t0) as sampler:
        read = [_reader(port, path) for _ in range(sizes.nonreaders)]
        got = await asyncio.wait_for(asyncio.gather(*read), sizes.write_timeout_s + 60.0)
        memory = await memory_figures(proc, sampler, before, sizes.settle_s)
    return {"control_read_bytes": sum(got), "control_rss_growth_bytes":
            memory["rss_peak_bytes"] - before, "control_held_bytes_peak":
            memory["held_bytes_peak"]}  # fmt: skip


def never_reader_trial(sizes: Sizes, side: str, transport: str) -> Trial:
    """Never-readers on a fresh server, and as control the same streams read to their end on
    another: RSS per connection beyond the control's, the held tokens' difference removed."""
    settings = {"max_streams": sizes.capped_max_streams} if side == CAPPED else {}
    with _server(sizes, **settings) as proc:
        control = asyncio.run(readers(proc, sizes, transport))
    with _server(sizes, **settings) as proc:
        trial = asyncio.run(never_readers(proc, sizes, transport))
    unread = trial["rss_peak_bytes"] - trial["rss_before_bytes"] - trial["held_bytes_peak"]
    read = control["control_rss_growth_bytes"] - control["control_held_bytes_peak"]
    return {**trial, **control, "unread_cost_per_conn_bytes": (unread - read) / sizes.nonreaders}


# -- probe 3: held-token memory -----------------------------------------------------------


async def _statuses(requests: list[Any]) -> dict[str, int]:
    """How many of the awaited responses had each status (0: the request failed)."""
    out: dict[str, int] = {}
    for result in await asyncio.gather(*requests, return_exceptions=True):
        key = str(result if isinstance(result, int) else 0)
        out[key] = out.get(key, 0) + 1
    return out


async def _create(s: aiohttp.ClientSession, url: str) -> int:
    async with s.post(url) as resp:
        await resp.read()
        return resp.status


async def longpoll_memory(proc: ServerProcess, sizes: Sizes) -> Trial:
    port = proc.target.port
    await victim(port, 1)
    before, t0 = await settled_rss(proc.pid, sizes.settle_s), time.monotonic()
    query = f"tokens={sizes.stream_tokens}&rate={sizes.stream_rate:g}"
    url = f"http://{ATTACKER}:{port}/longpoll?{query}"
    with Sampler(proc.pid, port, t0) as sampler:
        async with _session() as s:
            statuses = await _statuses([_create(s, url) for _ in range(sizes.longpolls)])
        served = await victim(port, sizes.victims)
        await asyncio.sleep(max(0.0, sizes.longpoll_watch_s - (time.monotonic() - t0)))
        memory = await memory_figures(proc, sampler, before, sizes.settle_s)
    return {"creates": sizes.longpolls, "create_statuses": statuses,
            "created": statuses.get("201", 0), **memory, **served}  # fmt: skip


def longpoll_trial(sizes: Sizes) -> Trial:
    with _server(sizes) as proc:
        return asyncio.run(longpoll_memory(proc, sizes))


# -- probe 4: one client creates as fast as it can ------------------------------------------


async def fill(proc: ServerProcess, sizes: Sizes) -> Trial:
    port = proc.target.port
    url = f"http://{ATTACKER}:{port}/longpoll?tokens=1&ttft_ms=0"
    codes: list[int] = []

    async def worker(s: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            try:
                codes.append(await _create(s, url))
            except (aiohttp.ClientError, TimeoutError):
                codes.append(0)

    await victim(port, 1)
    before, t0 = await settled_rss(proc.pid, sizes.settle_s), time.monotonic()
    with Sampler(proc.pid, port, t0) as sampler:
        during = asyncio.ensure_future(_after(2 * sizes.settle_s, victim(port, sizes.victims)))
        async with _session(sizes.fill_workers) as s:
            share, rest = divmod(sizes.fill_creates, sizes.fill_workers)
            counts = [share + (i < rest) for i in range(sizes.fill_workers)]
            await asyncio.gather(*(worker(s, count) for count in counts))
        fill_s = time.monotonic() - t0
        after = await victim(port, sizes.victims)
        memory = await memory_figures(proc, sampler, before, sizes.settle_s)
    statuses = {str(c): codes.count(c) for c in sorted(set(codes))}
    return {"creates": len(codes), "create_statuses": statuses, "created": codes.count(201),
            "fill_s": fill_s, "creates_per_s": len(codes) / fill_s, **memory,
            **{f"{k}_during": v for k, v in (await during).items()}, **after}  # fmt: skip


async def _after(delay_s: float, coro: Any) -> Any:
    await asyncio.sleep(delay_s)
    return await coro


def fill_trial(sizes: Sizes) -> Trial:
    with _server(sizes) as proc:
        return asyncio.run(fill(proc, sizes))


# -- probe 5: slowloris -------------------------------------------------------------------


async def _slow_head(port: int, stop: asyncio.Event) -> tuple[float, int]:
    """A connection that sends a request head one header line a second and never ends it:
    (seconds from before its connect to its close by the server, NaN if still open when `stop` is
    set; the status of what it was sent before the close, 0 if nothing)."""
    opened, got = time.monotonic(), b""  # before the connect: the server's deadline is later
    reader, writer = await asyncio.open_connection(ATTACKER, port, local_addr=(ATTACKER, 0))
    writer.write(f"GET /sse HTTP/1.1\r\nHost: {ATTACKER}:{port}\r\n".encode())
    while not stop.is_set():
        try:
            chunk = await asyncio.wait_for(reader.read(4096), 1.0)
        except TimeoutError:
            writer.write(b"X-Slow: 1\r\n")
            continue
        except ConnectionError:
            chunk = b""
        got = got or chunk
        if not chunk:
            break
    writer.close()
    closed_s = float("nan") if stop.is_set() else time.monotonic() - opened
    return closed_s, int(got[9:12]) if got.startswith(b"HTTP/1.1 ") else 0


async def slowloris(proc: ServerProcess, sizes: Sizes) -> Trial:
    port, n, stop = proc.target.port, sizes.slowloris, asyncio.Event()
    await victim(port, 1)
    before, t0 = await settled_rss(proc.pid, sizes.settle_s), time.monotonic()
    with Sampler(proc.pid, port, t0) as sampler:
        tasks = [asyncio.ensure_future(_slow_head(port, stop)) for _ in range(n)]
        await asyncio.sleep(2 * sizes.settle_s)
        served = await victim(port, sizes.victims)
        await asyncio.wait(tasks, timeout=sizes.header_timeout_s + 10.0)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        memory = await memory_figures(proc, sampler, before, sizes.settle_s)
    closes = [r for r in results if isinstance(r, tuple)]
    closed_s = [s for s, _ in closes if s == s]
    codes = [code for _, code in closes]
    return {"connections": n, "connect_failed": n - len(closes), "closed": len(closed_s),
            "not_closed": n - len(closed_s), "header_timeout_s": sizes.header_timeout_s,
            "closed_s_min": min(closed_s, default=float("nan")),
            "closed_s_max": max(closed_s, default=float("nan")),
            "closed_late_s": max(closed_s, default=float("nan")) - sizes.header_timeout_s,
            "close_statuses": {str(c): codes.count(c) for c in sorted(set(codes))},
            **memory, **served}  # fmt: skip


def slowloris_trial(sizes: Sizes) -> Trial:
    with _server(sizes) as proc:
        return asyncio.run(slowloris(proc, sizes))


# -- every probe ------------------------------------------------------------------------------


def measure(sizes: Sizes, record: Record) -> list[Trial]:
    """Every probe once, in the issue's order; `record(labels, measure)` as
    `benchmarks.suite.Ctx.record`."""
    plan: list[tuple[str, str, str, Callable[[], Trial]]] = [
        ("abuse_v1", DEFAULTS, "openai", functools.partial(v1_trial, sizes))
    ]
    for side in sizes.nonreader_sides:
        for transport in ("sse", "ndjson"):
            probe = functools.partial(never_reader_trial, sizes, side, transport)
            plan.append(("abuse_nonreader", side, transport, probe))
    plan += [
        ("abuse_longpoll", DEFAULTS, "longpoll", functools.partial(longpoll_trial, sizes)),
        ("abuse_fill", DEFAULTS, "longpoll", functools.partial(fill_trial, sizes)),
        ("abuse_slowloris", DEFAULTS, "http", functools.partial(slowloris_trial, sizes)),
    ]
    out = []
    for pos, (name, side, transport, run) in enumerate(plan):
        labels: Trial = {"benchmark": name, "side": side, "transport": transport, "gc": "auto",
                         "rep": 0, "position": pos}  # fmt: skip
        out.append(record(labels, functools.partial(_with_others, run)))
    return out


def _with_others(run: Callable[[], Trial]) -> Trial:
    """`run()` and the CPU other processes used meanwhile, in cores (`other_cores`)."""
    foreign0, t0 = foreign_cpu(), time.monotonic()
    trial = run()
    return {
        **trial,
        "other_cores": foreign_delta_s(foreign0, foreign_cpu()) / (time.monotonic() - t0),
    }
