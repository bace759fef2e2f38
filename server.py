"""pushlab's one server: every transport over the same seeded token hub.

    python server.py --port 8000        (or: pushlab serve)
    python server.py --tls              (HTTPS with a lab CA made at start)

`make_app(config)` mounts every transport's routes (transports/registry.py), the stream
control routes and `GET /stats`; `main()` runs it.

TLS: with `--tls` (or `--tls-cert`/`--tls-key`) aiohttp terminates TLS itself, TLS 1.2 and
1.3, ALPN offering only `http/1.1` (aiohttp speaks no HTTP/2: a client that offers h2 and
http/1.1 settles on HTTP/1.1, RFC 7301 section 3.2). `--tls` generates the lab CA of
netem/pki.py into a fresh temporary directory, removed at exit, and the ready line names it:

    pushlab serving on https://127.0.0.1:PORT ca=/tmp/pushlab-pki-.../ca.pem

(the prefix and the address are what harness/children.py reads; without TLS the line is
`pushlab serving on http://HOST:PORT`, unchanged). With the WebTransport endpoint running
(transports/web/webtransport.py, UDP) the line ends with ` wt=PORT`, its UDP port. HTTP/2
is a front's job: nginx or Caddy (`pushlab serve --front nginx|caddy`, experiments/cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from streams.errors import ParamError, PushlabError
from streams.hub import Hub
from streams.redislog import RedisHub
from streams.upstream import DEFAULT_PROMPT, UpstreamConfig
from transports.registry import TRANSPORTS
from transports.token import encode_token
from transports.web import guard, page, poll
from transports.web import webtransport as wt_endpoint
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
from transports.web.limits import LIMITS, AcceptErrors, ConnectionLimits, LimitedRunner
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
    options = {
        "source": upstream,
        "retention_s": config.retention_s,
        "idle_timeout_s": config.idle_timeout_s,
        "max_streams": config.max_streams,
        "memory_budget_bytes": int(config.memory_budget_mb * 2**20),
        "client_share": config.client_share,
    }
    hub: Hub
    if config.log == "memory":
        hub = Hub(encode_token, **options)  # type: ignore[arg-type]
    else:
        hub = RedisHub(encode_token, config.log, node_id=config.node_id,
                       lease_ms=config.lease_ms, max_len=config.log_max_len,
                       **options)  # type: ignore[arg-type]  # fmt: skip
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
            "log": _log_statistics(request.app[HUB]),
            "loop_lag_ms": request.app[LOOP_LAG],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "rss_bytes": _rss_bytes(),
            "connections": request.app[LIMITS].statistics(),
            # the QUIC listener (sessions, connections, cc, its UDP socket's buffers)
            "webtransport": wt_endpoint.statistics(request.app),
            "gc": {
                "policy": request.app[CONFIG].gc,
                "collections": [g["collections"] for g in gc.get_stats()],
            },
        }
    )


def _log_statistics(hub: Hub) -> dict[str, object]:
    if isinstance(hub, RedisHub):
        return hub.log_statistics()
    return {"kind": "memory"}


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
    config = config or ServerConfig()
    app = web.Application(middlewares=[error_middleware, guard.guard], client_max_size=64 * 1024)
    app[CONFIG] = config
    guard.install(app, config)
    app[COUNTERS] = Counters()
    app[LIMITS] = ConnectionLimits.from_config(config)
    app[LOOP_LAG] = {"last_ms": 0.0, "max_ms": 0.0}
    app.cleanup_ctx.append(_hub_context)
    app.cleanup_ctx.append(_gc_context)
    for module in dict.fromkeys(t.server for t in TRANSPORTS.values()):
        importlib.import_module(module).add_routes(app)
    poll.add_stream_routes(app)
    page.add_routes(app, debug=config.lab_debug)  # the demo page at / (transports/web/static)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


def tls_context(config: ServerConfig, pki_dir: Path | None = None) -> tuple[ssl.SSLContext, str]:
    """(the server's SSLContext, the CA file a client trusts or "") for a config with TLS on:
    a lab CA generated into `pki_dir` for --tls, else the given --tls-cert/--tls-key."""
    if config.tls:
        from netem.pki import make_lab_pki

        pki = make_lab_pki(pki_dir)
        ctx, ca_file = pki.server_context(alpn=("http/1.1",)), str(pki.ca_cert)
    else:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        ca_file = ""
    # TLS 1.2 and 1.3 only: what browsers still speak (RFC 8996 deprecates 1.0 and 1.1)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx, ca_file


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or SIGINT/SIGTERM; prints the URL once listening."""
    pki_dir = Path(tempfile.mkdtemp(prefix="pushlab-pki-")) if config.tls else None
    secret_dir = None
    if config.auth and not config.auth_secret_file:  # a key for this run, named when ready
        secret_dir = Path(tempfile.mkdtemp(prefix="pushlab-auth-"))
        config = dataclasses.replace(config, auth_secret_file=str(guard.write_secret(secret_dir)))
    try:
        ssl_context, ca_file = tls_context(config, pki_dir) if config.https else (None, "")
        app = make_app(config)
        runner = LimitedRunner(app, handler_cancellation=True, access_log=None,
                               keepalive_timeout=config.keepalive_s)  # fmt: skip
        await runner.setup()
        loop = asyncio.get_running_loop()
        loop_handler = loop.get_exception_handler()
        accept_errors = AcceptErrors(app[LIMITS])  # quiet and bounded when accept(2) fails
        loop.set_exception_handler(accept_errors)
        try:
            reuse = config.reuse_port or None
            site = web.TCPSite(runner, config.host, config.port, backlog=4096,
                               ssl_context=ssl_context, reuse_port=reuse)  # fmt: skip
            await site.start()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            port = runner.addresses[0][1]
            host = f"[{config.host}]" if ":" in config.host else config.host
            line = f"pushlab serving on {'https' if config.https else 'http'}://{host}:{port}"
            if ca_file:
                line += f" ca={shlex.quote(ca_file)}"
            if wt_endpoint.ENDPOINT in app:  # the UDP port of the WebTransport endpoint
                line += f" wt={app[wt_endpoint.ENDPOINT].port}"
            if secret_dir is not None:
                line += f" secret={shlex.quote(config.auth_secret_file)}"
            print(line, flush=True)  # the ready line
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
            loop.set_exception_handler(loop_handler)
            accept_errors.close()
    finally:
        if pki_dir is not None:
            shutil.rmtree(pki_dir, ignore_errors=True)
        if secret_dir is not None:
            shutil.rmtree(secret_dir, ignore_errors=True)


def _upstream_config(config: ServerConfig) -> UpstreamConfig:
    prompt = config.upstream_prompt or DEFAULT_PROMPT
    return UpstreamConfig(config.upstream, config.upstream_model, config.upstream_key_env,
                          prompt, config.upstream_extra)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = config_from_args(parser.parse_args(argv))
    if problem := config.problem():
        parser.error(problem)  # one line, exit 2
    if config.tls_cert:  # load the files now: a one-line error, not a traceback
        try:
            tls_context(config)
        except OSError as exc:  # ssl.SSLError is an OSError
            print(f"pushlab serve: cannot use --tls-cert/--tls-key: {exc}", file=sys.stderr)
            return 2
    if config.auth_secret_file:  # read the key now: a one-line error, not a traceback
        try:
            guard.load_authority(config)
        except (OSError, ValueError) as exc:
            print(f"pushlab serve: cannot use --auth-secret-file: {exc}", file=sys.stderr)
            return 2
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
    if config.workers > 1:
        return serve_workers(config)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"pushlab serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except PushlabError as exc:  # the shared log unreachable at start
        print(f"pushlab serve: {exc.message}", file=sys.stderr)
        return 1
    return 0


def serve_workers(config: ServerConfig, start_timeout_s: float = 30.0) -> int:
    """`--workers N`: N server processes accepting on one port (SO_REUSEPORT: the kernel
    spreads new connections over them by a hash of the 4-tuple), each a node of its own in
    the shared log, so a stream outlives the worker that generated it. This process only
    starts them, prints one ready line naming their pids, and stops them by their pids."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:  # hold the port (bound, never listening: the kernel gives it no connection)
        holder.bind((config.host, config.port))
    except OSError as exc:
        print(f"pushlab serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    node = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
    secret_dir = None
    if config.auth and not config.auth_secret_file:  # one key for every worker
        secret_dir = Path(tempfile.mkdtemp(prefix="pushlab-auth-"))
        config = dataclasses.replace(config, auth_secret_file=str(guard.write_secret(secret_dir)))
    children: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for i in range(config.workers):
            worker = dataclasses.replace(config, workers=1, port=port, reuse_port=True,
                                         node_id=f"{node}-w{i}")  # fmt: skip
            children.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *worker.to_argv()],
                stdout=subprocess.PIPE, text=True,
            ))  # fmt: skip
        lines = [_ready_line(child, start_timeout_s) for child in children]
        if not all(lines):
            print("pushlab serve: a worker did not start (its error is above)", file=sys.stderr)
            return 1
        pids = ",".join(str(child.pid) for child in children)
        line = f"{lines[0]} workers={config.workers} pids={pids}"
        if secret_dir is not None:
            line += f" secret={shlex.quote(config.auth_secret_file)}"
        print(line, flush=True)
        while not stop.wait(0.5):
            if any(child.poll() is not None for child in children):
                dead = [str(c.pid) for c in children if c.poll() is not None]
                print(f"pushlab serve: worker {','.join(dead)} exited", file=sys.stderr)
                children = [c for c in children if c.poll() is None]
                if not children:
                    return 1
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        holder.close()
        if secret_dir is not None:
            shutil.rmtree(secret_dir, ignore_errors=True)


def _ready_line(child: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's ready line, or "" if it exits or stays silent for `timeout_s`."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout_s)
    line = child.stdout.readline().strip() if ready else ""
    return line if line.startswith("pushlab serving on ") else ""


if __name__ == "__main__":
    sys.exit(main())
