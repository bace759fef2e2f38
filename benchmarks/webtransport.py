"""Benchmark `webtransport`: N WebTransport sessions against N WebSocket streams, one server.

Target (the WebTransport issue): at 100 sessions x 20 tokens/s on loopback, every token
delivered, and WebTransport's p99 token latency at most 2x WebSocket's, measured in the same
run against the same server (one `server.py` on uvloop: its aiohttp listener for WebSocket,
its aioquic endpoint on UDP for WebTransport), alternating which goes first. WebTransport
uses reliable delivery here (tokens on a unidirectional QUIC stream, the default
`wt_delivery="stream"`), so a lost token is a failure, as for WebSocket.

Per trial, one fleet of N clients of one transport, started `stagger_ms` apart (about N
token intervals: a session costs a QUIC handshake, TLS 1.3 in user space on both ends, and
100 at once would measure the handshake burst, not the token path; and spaced so the
streams' tokens fall due spread over each interval, not all at once), each streaming
`tokens` at `rate`: delivered, token latency p50/p99 with their count (emit on the server to
receipt on the client, one clock) over the whole trial, the same over the steady window
(from the last stream's first token to the first stream's last: every stream open, no
handshake running; NaN if the streams never all overlapped), each event loop's lag (how late
a 50 ms timer fires: the server's from /stats every 0.2 s, the clients' from a timer task
beside them; p90 and max) to say which side fell behind, the server's CPU per token
delivered (scheduler nanoseconds of its process over the whole trial: handshakes included,
since a session is part of what WebTransport costs), the client's (this process) cores, and
other processes' load. The clients run in this process on uvloop, as
`benchmarks/h2_throughput.py`'s do: Python's aioquic client is the heavier side, and its
cores are recorded so a saturated client shows.

Nothing here imports `experiments` (tests/test_rooms.py).
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Callable

from benchmarks.trials import delivery, latency
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord
from harness import procstat
from harness.children import ServerProcess
from harness.procstat import foreign_cpu, foreign_delta_s
from streams.params import GenParams

Trial = dict[str, object]
SIDES = ("websocket", "webtransport")  # the reference first, as h2_throughput lists h1 first


def stagger_ms(sessions: int, rate: float) -> float:
    """How far apart the streams start: one token interval plus 1/N of one, so the ramp
    takes about N intervals (5 s for 100 at 20/s) and the N streams' tokens fall due evenly
    spread over each interval, as independent readers' would.

    MEASURED (2-core VM, loopback), why both: one aioquic session's handshake costs 18-34 ms
    (client and server, pure-Python TLS 1.3), so 100 sessions started within 1 s held both
    event loops for most of that second and the tokens of the sessions already streaming
    waited behind them (60 sessions: p50 11 ms, p99 283 ms, WebSocket 0.3 / 6 ms). A stagger
    of exactly one interval (50 ms) put every stream's tokens due in the same millisecond:
    100 tokens at once every 50 ms, and at ~0.45 ms of server CPU per WebTransport token the
    last of each burst waited ~40 ms (p99 242-260 ms, WebSocket 5.5-7.9, quiet machine)."""
    interval_ms = 1000.0 / rate
    return interval_ms * (1.0 + 1.0 / sessions)
TTFT_MS = 100.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


LAG_INTERVAL_S = 0.05  # the clients' lag timer, as server.py's own


async def _lagging(lags: list[float]) -> None:
    """Append how late each LAG_INTERVAL_S timer of this loop fires (ms), until cancelled."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        lags.append((loop.time() - start - LAG_INTERVAL_S) * 1e3)


def fleet(target: object, transport: str, sessions: int, params: GenParams,
          lags: list[float] | None = None) -> list[StreamRecord]:  # fmt: skip
    """`sessions` clients of `transport` in this process (uvloop), `stagger_ms` apart; the
    loop's lag samples appended to `lags`."""
    import asyncio

    import uvloop

    spec = FleetSpec(transport, sessions, stagger_ms=stagger_ms(sessions, params.rate))

    async def run() -> list[StreamRecord]:
        watcher = asyncio.create_task(_lagging(lags if lags is not None else []))
        try:
            return list(await run_fleet(spec, target, params))  # type: ignore[arg-type]
        finally:
            watcher.cancel()

    return uvloop.run(run())


class _ServerLag:
    """The server's loop lag (/stats `loop_lag_ms.last_ms`) every 0.2 s, from a thread."""

    def __init__(self, server: ServerProcess) -> None:
        import threading

        self.server, self.samples = server, list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from harness.sampler import read_stats

        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(read_stats(self.server.target)["loop_lag_ms"]["last_ms"]))
            except (OSError, KeyError, ValueError):
                continue

    def __enter__(self) -> _ServerLag:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _lag_figures(prefix: str, lags: list[float]) -> Trial:
    import numpy as np

    if not lags:
        return {f"{prefix}_lag_p90_ms": math.nan, f"{prefix}_lag_max_ms": math.nan}
    return {f"{prefix}_lag_p90_ms": float(np.percentile(lags, 90)),
            f"{prefix}_lag_max_ms": float(max(lags))}  # fmt: skip


def steady_latency(records: list[StreamRecord]) -> Trial:
    """Token latency p50/p99 (and count) of the tokens received while every stream was open:
    after the last stream's first token, before the first stream's last."""
    import numpy as np

    recv = [np.frombuffer(r.t_recv_ns, np.int64) for r in records]
    if not recv or any(len(t) == 0 for t in recv):
        return {"steady_p50_ms": math.nan, "steady_p99_ms": math.nan, "steady_count": 0}
    start, end = max(int(t.min()) for t in recv), min(int(t.max()) for t in recv)
    lat = np.concatenate([
        ((t - np.frombuffer(r.t_emit_ns, np.int64)) / 1e6)[(t >= start) & (t <= end)]
        for t, r in zip(recv, records, strict=True)
    ])  # fmt: skip
    if start >= end or not len(lat):
        return {"steady_p50_ms": math.nan, "steady_p99_ms": math.nan, "steady_count": 0}
    return {"steady_p50_ms": float(np.percentile(lat, 50)),
            "steady_p99_ms": float(np.percentile(lat, 99)), "steady_count": len(lat)}  # fmt: skip


def trial(server: ServerProcess, side: str, sessions: int, tokens: int, rate: float) -> Trial:
    """One fleet of `side`'s transport; what it delivered, its latency and its CPU."""
    params = GenParams(tokens=tokens, rate=rate, ttft_ms=TTFT_MS)
    server_ns0, client0, foreign0, t0 = procstat.cpu_ns(server.pid), _cpu_s(), foreign_cpu(), \
        time.monotonic()  # fmt: skip
    client_lags: list[float] = []
    with _ServerLag(server) as server_lag:
        records = fleet(server.target, side, sessions, params, client_lags)
    wall_s = time.monotonic() - t0
    server_s = ((procstat.cpu_ns(server.pid) or 0) - (server_ns0 or 0)) / 1e9
    client_s, foreign_s = _cpu_s() - client0, foreign_delta_s(foreign0, foreign_cpu())
    done = delivery(records, params)
    got = int(done["tokens_expected"]) - int(done["tokens_lost"])  # type: ignore[call-overload,unused-ignore]
    conns = [c for r in records for c in r.conns]
    return {
        **done,
        **latency(records),
        **steady_latency(records),
        **_lag_figures("server", server_lag.samples),
        **_lag_figures("client", client_lags),
        "sessions": sessions,
        "rate": rate,
        "tokens_per_stream": tokens,
        "cpu_per_token_us": 1e6 * server_s / max(got, 1),
        "server_cores": server_s / wall_s,
        "client_process_cores": client_s / wall_s,  # the clients: this one process
        "connections": len(conns),
        "stack": "/".join(sorted({c.stack for c in conns})),
        "cc": "/".join(sorted({c.cc for c in conns if c.cc})) or "kernel",
        "wall_s": wall_s,
        "other_cores": foreign_s / wall_s,
    }


def measure(sessions: int, tokens: int, rate: float, reps: int,
            record: Callable[[Trial, Callable[[], Trial]], Trial]) -> list[Trial]:  # fmt: skip
    """A warm-up fleet per side (not recorded), then `reps` repetitions of both sides,
    alternating which goes first; `record(labels, measure)` as `benchmarks.suite.Ctx`."""
    out = []
    server = ServerProcess(["--uvloop"])
    server.start()
    try:
        for side in SIDES:
            fleet(server.target, side, min(sessions, 10), GenParams(tokens=10, rate=50.0,
                                                                    ttft_ms=0.0))  # fmt: skip
        for rep in range(reps):
            order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
            for pos, side in enumerate(order):
                labels: Trial = {"benchmark": "webtransport", "side": side,
                                 "transport": "webtransport", "gc": "auto", "rep": rep,
                                 "position": pos}  # fmt: skip
                run = functools.partial(trial, server, side, sessions, tokens, rate)
                out.append(record(labels, run))
    finally:
        server.stop()
    return out
