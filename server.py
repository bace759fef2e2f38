"""pushlab's one server: every transport over the same seeded token hub.

    python server.py --port 8000        (or: pushlab serve)

`make_app(config)` mounts every transport's routes (transports/registry.py), the stream
control routes and `GET /stats`; `main()` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator

from aiohttp import web

from streams.errors import ParamError
from streams.hub import Hub
from streams.upstream import DEFAULT_PROMPT, UpstreamConfig
from transports.registry import TRANSPORTS
from transports.token import encode_token
from transports.web import page, poll
from transports.web.common import (
    CONFIG,
    COUNTERS,
    HUB,
    Counters,
    ServerConfig,
    error_middleware,
    json_response,
)
from transports.web.config import GC_FULL_INTERVAL_S, build_parser, config_from_args
from transports.web.upstream import Upstream

__all__ = ["build_parser", "config_from_args", "main", "make_app", "serve"]

LOOP_LAG = web.AppKey("loop_lag", dict)
LAG_INTERVAL_S = 0.1


async def _hub_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    upstream = None
    if config.upstream:
        upstream = Upstream(_upstream_config(config))
        await upstream.start()
    hub = Hub(
        encode_token,
        source=upstream,
        retention_s=config.retention_s,
        idle_timeout_s=config.idle_timeout_s,
        max_streams=config.max_streams,
    )
    app[HUB] = hub
    await hub.start()
    lag_task = asyncio.create_task(_watch_loop_lag(app[LOOP_LAG]))
    yield
    lag_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag_task
    await hub.aclose()
    if upstream is not None:
        await upstream.aclose()


async def _gc_context(app: web.Application) -> AsyncIterator[None]:
    """The collector policy. "auto" leaves CPython's thresholds alone; under thousands of
    streams its collections stop the loop for tens of milliseconds (measured: token p99
    55-60 ms instead of 7 ms at 1000 SSE streams x 20 tokens/s). "scheduled" freezes what
    exists at start and turns automatic collection off: acyclic garbage is still freed at
    once by reference counting, and one full collection every GC_FULL_INTERVAL_S reclaims
    cycles. (Collecting the young generations every 100 ms instead was measured too: at
    40k tokens/s each pass examines tens of thousands of new objects and p50 rose to 7-11 ms.)
    /stats reports the policy and the collections per generation."""
    if app[CONFIG].gc != "scheduled":
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()

    async def collect_forever() -> None:
        while True:
            await asyncio.sleep(GC_FULL_INTERVAL_S)
            gc.collect()

    task = asyncio.create_task(collect_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gc.enable()


async def _watch_loop_lag(lag: dict[str, float]) -> None:
    """Event-loop lag: how late a timer set for LAG_INTERVAL_S fires."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        late_ms = (loop.time() - start - LAG_INTERVAL_S) * 1e3
        lag["last_ms"] = late_ms
        lag["max_ms"] = max(lag.get("max_ms", 0.0), late_ms)


async def stats(request: web.Request) -> web.Response:
    """GET /stats: the server's own counters, for experiments to sample."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hub_stats = request.app[HUB].statistics()
    return json_response(
        {
            "time_ns": time.time_ns(),
            "pid": os.getpid(),
            "hub": hub_stats.__dict__ if hasattr(hub_stats, "__dict__") else _as_dict(hub_stats),
            "transports": request.app[COUNTERS].snapshot(),
            "loop_lag_ms": request.app[LOOP_LAG],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "rss_bytes": _rss_bytes(),
            "gc": {
                "policy": request.app[CONFIG].gc,
                "collections": [g["collections"] for g in gc.get_stats()],
            },
        }
    )


def _as_dict(record: object) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}  # type: ignore[attr-defined]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return -1


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def make_app(config: ServerConfig | None = None) -> web.Application:
    """The whole server: every transport, stream control, stats."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CONFIG] = config or ServerConfig()
    app[COUNTERS] = Counters()
    app[LOOP_LAG] = {"last_ms": 0.0, "max_ms": 0.0}
    app.cleanup_ctx.append(_hub_context)
    app.cleanup_ctx.append(_gc_context)
    for module in dict.fromkeys(t.server for t in TRANSPORTS.values()):
        importlib.import_module(module).add_routes(app)
    poll.add_stream_routes(app)
    page.add_routes(app)  # the demo page at / (transports/web/static)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or SIGINT/SIGTERM; prints the URL once listening."""
    runner = web.AppRunner(make_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"pushlab serving on http://{host}:{port}", flush=True)  # the ready line
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _upstream_config(config: ServerConfig) -> UpstreamConfig:
    prompt = config.upstream_prompt or DEFAULT_PROMPT
    return UpstreamConfig(config.upstream, config.upstream_model, config.upstream_key_env,
                          prompt, config.upstream_extra)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    if config.upstream:  # check the relay's settings now: a one-line error, not a traceback
        try:
            Upstream(_upstream_config(config))
        except ParamError as exc:
            print(f"pushlab serve: {exc.message}", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # thousands of connections need thousands of descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if config.uvloop:
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"pushlab serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
