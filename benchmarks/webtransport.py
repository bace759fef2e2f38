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

The sweep (`measure_sweep`, benchmark `webtransport_sweep`) asks the two questions the
100-session run could not answer: how much of the miss is the lab's own client, and what load
one Python QUIC endpoint carries within the target. Its clients run in the benchmark's
`FleetPool` workers (uvloop, collector off; both sides alike, client i in worker i mod
workers, the same `stagger_ms` over the whole fleet), each worker's loop lag recorded beside
its clients (`lagged_fleet`), so a lagging client shows per worker; and it measures several
loads against one server, smallest first, each trial labelled with its load
(`sweep_label`, the summary's `transport`). The server's kernel share of its CPU
(`server_sys_share`) says how much of a token is the loopback UDP path, not Python.

Nothing here imports `experiments` (tests/test_rooms.py).
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Callable, Sequence

from benchmarks.trials import delivery, latency
from clients.base import Target
from clients.fleet import FleetPool, FleetSpec, WorkerStats, run_fleet
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


def _user_sys_s(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds (proc(5) stat fields 14 and 15), 0s if gone:
    the system share says how much of a token's cost is the kernel's (UDP sendmsg/recvmsg
    and the wake-ups on loopback) rather than Python's."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


LAG_INTERVAL_S = 0.05  # the clients' lag timer, as server.py's own


async def _lagging(lags: list[float]) -> None:
    """Append how late each LAG_INTERVAL_S timer of this loop fires (ms), until cancelled."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        lags.append((loop.time() - start - LAG_INTERVAL_S) * 1e3)


async def lagged_fleet(spec: FleetSpec, target: Target, params: GenParams, *, indices: range,
                       start_at_s: float) -> list[tuple[StreamRecord, list[float]]]:  # fmt: skip
    """A pool worker's share (`FleetPool.run_with`): `run_fleet` with its loop's lag samples
    beside it, handed back with the share's first record (the others carry none)."""
    import asyncio

    lags: list[float] = []
    watcher = asyncio.create_task(_lagging(lags))
    try:
        records = await run_fleet(spec, target, params, indices=indices, start_at_s=start_at_s)
    finally:
        watcher.cancel()
    return [(record, lags if k == 0 else []) for k, record in enumerate(records)]


Lags = list[float]


def pool_fleet(
    pool: FleetPool, target: Target, transport: str, sessions: int, params: GenParams
) -> tuple[list[StreamRecord], list[Lags], list[WorkerStats]]:
    """`sessions` clients of `transport` over the pool's workers (uvloop, collector off),
    `stagger_ms` apart over the whole fleet: the records, each worker's loop lag samples and
    its load."""
    spec = FleetSpec(transport, sessions, stagger_ms=stagger_ms(sessions, params.rate),
                     workers=pool.workers, uvloop=True)  # fmt: skip
    run = functools.partial(lagged_fleet, spec, target, params)
    pairs, stats = pool.run_with(spec, target, params, run)
    lags = [pairs[w][1] for w in range(min(pool.workers, sessions))]
    return [record for record, _ in pairs], lags, stats


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


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _p90(lags: list[float]) -> float:
    import numpy as np

    return float(np.percentile(lags, 90)) if lags else math.nan


def _worst_lags(worker_lags: list[list[float]]) -> Trial:
    """The clients' loop lag: p90 per worker process, the highest of those; and the highest
    sample of any."""
    p90s = [_p90(lags) for lags in worker_lags if lags]
    peaks = [max(lags) for lags in worker_lags if lags]
    return {"client_lag_p90_ms": max(p90s, default=math.nan),
            "client_lag_max_ms": max(peaks, default=math.nan)}  # fmt: skip


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


def trial(server: ServerProcess, side: str, sessions: int, tokens: int, rate: float,
          pool: FleetPool | None = None) -> Trial:  # fmt: skip
    """One fleet of `side`'s transport (in this process, or over `pool`'s workers); what it
    delivered, its latency and its CPU."""
    params = GenParams(tokens=tokens, rate=rate, ttft_ms=TTFT_MS)
    server_ns0, client0, foreign0, t0 = procstat.cpu_ns(server.pid), _cpu_s(), foreign_cpu(), \
        time.monotonic()  # fmt: skip
    user0, sys0 = _user_sys_s(server.pid)
    worker_lags: list[list[float]] = []
    stats: list[WorkerStats] = []
    with _ServerLag(server) as server_lag:
        if pool is None:
            worker_lags.append([])
            records = fleet(server.target, side, sessions, params, worker_lags[0])
        else:
            records, worker_lags, stats = pool_fleet(pool, server.target, side, sessions, params)
    wall_s = time.monotonic() - t0
    server_s = ((procstat.cpu_ns(server.pid) or 0) - (server_ns0 or 0)) / 1e9
    client_s, foreign_s = _cpu_s() - client0, foreign_delta_s(foreign0, foreign_cpu())
    user1, sys1 = _user_sys_s(server.pid)
    done = delivery(records, params)
    got = int(done["tokens_expected"]) - int(done["tokens_lost"])  # type: ignore[call-overload,unused-ignore]
    conns = [c for r in records for c in r.conns]
    clients: Trial = {"client_process_cores": client_s / wall_s}  # the clients: this process
    if pool is not None:  # the workers' CPU over their fleet; this process only waited
        clients = {"client_cores": sum(s.cpu_s for s in stats) / wall_s,
                   "client_workers": len(stats),
                   "client_worker_cores_max": max((s.cpu_fraction for s in stats), default=0.0),
                   "client_worker_wall_s_max": max((s.wall_s for s in stats), default=0.0),
                   **{f"client{w}_lag_p90_ms": _p90(lags)
                      for w, lags in enumerate(worker_lags)}}  # fmt: skip
    return {
        **done,
        **latency(records),
        **steady_latency(records),
        **_lag_figures("server", server_lag.samples),
        **_worst_lags(worker_lags),
        **clients,
        "sessions": sessions,
        "rate": rate,
        "tokens_per_stream": tokens,
        "cpu_per_token_us": 1e6 * server_s / max(got, 1),
        "server_cores": server_s / wall_s,
        "server_sys_share": _ratio(sys1 - sys0, (user1 - user0) + (sys1 - sys0)),
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


def sweep_label(sessions: int) -> str:
    """The sweep's `transport` label of one load: the summary groups and compares by it."""
    return f"{sessions} sessions"


def measure_sweep(sessions: Sequence[int], tokens: int, rate: float, reps: int,
                  pool: FleetPool, record: Callable[[Trial, Callable[[], Trial]], Trial],
                  server_args: Sequence[str] = ("--uvloop",)) -> list[Trial]:  # fmt: skip
    """Both sides at each load of `sessions`, the clients over `pool`'s workers, one server
    for the whole sweep: a warm-up fleet per side, then per repetition each load from the
    smallest, both sides alternating which goes first."""
    out = []
    server = ServerProcess(list(server_args))
    server.start()
    try:
        warm = GenParams(tokens=10, rate=50.0, ttft_ms=0.0)
        for side in SIDES:
            pool_fleet(pool, server.target, side, min(min(sessions), 10), warm)
        for rep in range(reps):
            for n in sorted(sessions):
                order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
                for pos, side in enumerate(order):
                    labels: Trial = {"benchmark": "webtransport_sweep", "side": side,
                                     "transport": sweep_label(n), "gc": "auto", "rep": rep,
                                     "position": pos}  # fmt: skip
                    run = functools.partial(trial, server, side, n, tokens, rate, pool)
                    out.append(record(labels, run))
    finally:
        server.stop()
    return out
