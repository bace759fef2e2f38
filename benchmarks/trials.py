"""One measured trial against one running server, returned as a flat dict of numbers.

`fleet_trial`: N clients (pushlab's own, or the light reader of `clients.light`) in the
fleet's worker processes, each with its garbage collector off, against a server; server CPU
per token or per request over the steady window (every stream started, none finished),
delivery, per-token latency.
`drink_trial`: one unpaced stream read by the minimal sink; tokens/s and CPU per token.
`idle_trial`: a fresh server, N streams opened that send nothing; RSS growth per connection.
Nothing here prints or writes files.

`fleet_trial(..., grouped=True)` (the Redis-log benchmarks) samples with `GroupSampler`:
every process of the server summed (a `--workers` parent and its workers: one port cannot
address each worker's /stats, so their CPU comes from /proc by pid and delivery from the
clients' own counts), each one apart, and the Redis its log lives in (its scheduler
clock); CPU per token is then the server's plus Redis's, reported apart as well. A second
thread asks /stats four times a second for the loop lag of whichever process answers
(a new connection each time: the kernel picks the worker); both sides of such a trial are
sampled the same way, and /stats costs under 1 ms of the server's CPU a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from analysis.stats import percentiles
from benchmarks import sink
from benchmarks.procs import Server, running
from clients.base import ClientOptions
from clients.fleet import SATURATED_CPU_FRACTION, FleetPool, FleetSpec, WorkerStats
from clients.light import LightRecord
from clients.recorder import StreamRecord, stream_row
from harness import procstat
from harness.procstat import foreign_cpu, foreign_delta_s
from harness.sampler import Sample, Sampler, read_stats, take
from streams.params import GenParams

Trial = dict[str, Any]
MACHINE_SATURATED = 0.95  # busy cores / cores at or above which the machine was the limit
SAMPLE_INTERVAL_S = 0.05  # the server's /proc, often enough to find a steady window


class TokenArrays(Protocol):
    """What latency and CPU windows need of a stream record (pushlab's or the light one)."""

    seq: array
    t_emit_ns: array
    t_recv_ns: array
    connection: array


def fleet_trial(
    pool: FleetPool,
    server: Server,
    transport: str,
    clients: int,
    params: GenParams,
    stagger_ms: float,
    client: str = "python",
    grouped: bool = False,
) -> Trial:
    """`clients` streams of `transport` spread over the pool's workers, read by pushlab's own
    clients (`client="python"`) or by the light reader (`"light"`, `clients.light`);
    `grouped`: sampled by `GroupSampler` (every process of the server, its Redis, loop lag)."""
    spec = FleetSpec(transport, clients, stagger_ms=stagger_ms, workers=pool.workers, uvloop=True)
    light: list[LightRecord] = []
    full: list[StreamRecord] = []
    foreign0 = foreign_cpu()
    watch = GroupSampler(server, SAMPLE_INTERVAL_S) if grouped else None
    with watch or Sampler(None, server.pid, SAMPLE_INTERVAL_S) as sampler:
        if client == "light":
            light, stats = pool.run_light(spec, server.target, params)
        else:
            full, stats = pool.run(spec, server.target, params, ClientOptions())
    foreign_s = foreign_delta_s(foreign0, foreign_cpu())
    records: Sequence[StreamRecord] | Sequence[LightRecord] = light if client == "light" else full
    trial = {
        "client": client,
        **(light_delivery(light, params) if client == "light" else delivery(full, params)),
        **latency(records),
        **lateness(records, params),
        **steady_cpu(records, sampler),
        **load(stats, sampler.samples, foreign_s),
    }
    return {**trial, **group_cpu(trial, records, watch)} if watch is not None else trial


def _durations(e2e_ms: Sequence[float], params: GenParams) -> Trial:
    ideal_ms = params.ttft_ms + (params.tokens - 1) / params.rate * 1e3
    e2e = np.array(e2e_ms, dtype=float)
    ok = e2e[np.isfinite(e2e)]
    return {
        "ideal_ms": ideal_ms,
        "duration_ratio_p50": float(np.median(ok)) / ideal_ms if len(ok) else math.nan,
        "duration_ratio_max": float(ok.max()) / ideal_ms if len(ok) else math.nan,
    }


def delivery(records: Sequence[StreamRecord], params: GenParams) -> Trial:
    """Tokens delivered, duplicates, errors, and each stream's duration against the ideal."""
    rows: list[dict[str, Any]] = [stream_row(r) for r in records]
    expected = sum(int(r["tokens_expected"]) for r in rows)
    lost = sum(int(r["lost"]) for r in rows)
    received = sum(int(r["tokens_received"]) for r in rows)
    errors = [str(r["error"]) for r in rows if r["error"]]
    return {
        "streams": len(rows),
        "tokens_expected": expected,
        "tokens_lost": lost,
        "tokens_duplicated": sum(int(r["duplicated"]) for r in rows),
        "delivered_pct": 100.0 * (expected - lost) / expected if expected else math.nan,
        "stream_errors": len(errors),
        "first_error": errors[0] if errors else "",
        **_durations([float(r["e2e_ms"]) for r in rows], params),
        "bytes_down_per_token": sum(int(r["bytes_down"]) for r in rows) / max(received, 1),
        "http_requests": sum(int(r["http_requests"]) for r in rows),
    }


def light_delivery(records: Sequence[LightRecord], params: GenParams) -> Trial:
    """`delivery` for the light reader's records: every seq 1..N exactly once per stream."""
    expected = lost = dup = received = down = 0
    e2e, errors = [], []
    for r in records:
        seqs = np.frombuffer(r.seq, np.int64) if len(r.seq) else np.zeros(0, np.int64)
        distinct = np.unique(seqs[(seqs >= 1) & (seqs <= r.tokens_expected)])
        expected += r.tokens_expected
        lost += r.tokens_expected - len(distinct)
        dup += len(seqs) - len(np.unique(seqs))
        received += len(distinct)
        down += r.bytes_down
        ended = r.t_end_perf_ns and not r.error
        e2e.append((r.t_end_perf_ns - r.t_start_perf_ns) / 1e6 if ended else math.nan)
        errors += [r.error] if r.error else []
    return {
        "streams": len(records),
        "tokens_expected": expected,
        "tokens_lost": lost,
        "tokens_duplicated": dup,
        "delivered_pct": 100.0 * (expected - lost) / expected if expected else math.nan,
        "stream_errors": len(errors),
        "first_error": errors[0] if errors else "",
        **_durations(e2e, params),
        "bytes_down_per_token": down / max(received, 1),
        "http_requests": len(records),
    }


def latency(records: Sequence[TokenArrays]) -> Trial:
    """Per-token latency (receive minus emit time, same clock) over every token received."""
    parts = [
        (np.frombuffer(r.t_recv_ns, np.int64) - np.frombuffer(r.t_emit_ns, np.int64)) / 1e6
        for r in records
        if len(r.seq)
    ]
    stats = percentiles(np.concatenate(parts) if parts else np.zeros(0), (50, 90, 99))
    return {f"latency_{k}{'' if k == 'count' else '_ms'}": v for k, v in stats.items()}


def lateness(records: Sequence[StreamRecord] | Sequence[LightRecord], params: GenParams) -> Trial:
    """How late each token arrived against the ideal schedule, measured by the client alone:
    receive time minus (request start + ttft + (seq - 1) / rate). Unlike `latency`, this does
    not depend on when a server stamps its tokens, so a server that falls behind its schedule
    shows here even if it stamps each token as it writes it."""
    parts = []
    for r in records:
        if not len(r.seq):
            continue
        if isinstance(r, LightRecord):
            start_ns, recv = r.t_start_ns, np.frombuffer(r.t_recv_ns, np.int64)
        else:
            start_ns, recv = r.t_start_perf_ns, np.frombuffer(r.t_recv_perf_ns, np.int64)
        seq = np.frombuffer(r.seq, np.int64)
        due_ns = start_ns + params.ttft_ms * 1e6 + (seq - 1) * (1e9 / params.rate)
        parts.append((recv - due_ns) / 1e6)
    stats = percentiles(np.concatenate(parts) if parts else np.zeros(0), (50, 99))
    return {f"lateness_{k}_ms": v for k, v in stats.items() if k != "count"}


def steady_window(records: Sequence[TokenArrays], sampler: Sampler) -> tuple[Sample, Sample, bool]:
    """The samples just inside the span from the last stream's first token to the first
    stream's last one, and True; without such a moment, the first and last sample and False."""
    emits = [np.frombuffer(r.t_emit_ns, np.int64) for r in records if len(r.seq)]
    window = (
        sampler.window(max(int(e.min()) for e in emits), min(int(e.max()) for e in emits))
        if emits
        else None
    )
    if window is None:  # no moment with every stream streaming: use the whole trial
        return sampler.samples[0], sampler.samples[-1], False
    return window[0], window[1], True


def steady_cpu(records: Sequence[TokenArrays], sampler: Sampler) -> Trial:
    """Server CPU per token and per request between the last stream's first token and the
    first stream's last one (the samples just inside), counting tokens by their emit time."""
    got = [r for r in records if len(r.seq)]
    emits = [np.frombuffer(r.t_emit_ns, np.int64) for r in got]
    a, b, steady = steady_window(records, sampler)
    tokens = sum(int(np.count_nonzero((e >= a.t_ns) & (e <= b.t_ns))) for e in emits)
    requests = 0  # polls (or streams) that delivered at least one token inside the window
    for r in got:
        recv = np.frombuffer(r.t_recv_ns, np.int64)
        inside = (recv >= a.t_ns) & (recv <= b.t_ns)
        if len(r.connection):
            requests += len(np.unique(np.frombuffer(r.connection, np.int64)[inside]))
        else:  # the light reader: one request per stream
            requests += int(inside.any())
    cpu_s, window_s = b.cpu_s - a.cpu_s, (b.t_ns - a.t_ns) / 1e9
    return {
        "steady_window": steady,
        "window_s": window_s,
        "window_tokens": tokens,
        "window_requests": requests,
        "server_cpu_s": cpu_s,
        "server_cores": cpu_s / window_s if window_s > 0 else float("nan"),
        "cpu_per_token_us": 1e6 * cpu_s / tokens if tokens else float("nan"),
        "cpu_per_request_us": 1e6 * cpu_s / requests if requests else float("nan"),
        "machine_busy_cores": (b.busy_s - a.busy_s) / window_s if window_s > 0 else float("nan"),
    }


class GroupSampler(Sampler):
    """`Sampler` over every process of `server` (`Sample.cpu_s` and `rss_bytes` summed;
    `stats["pid_cpu_s"]` each process's, `stats["redis_cpu_s"]` its Redis's), plus a thread
    that reads /stats every LAG_EVERY_S for the loop lag of the process that answers."""

    LAG_EVERY_S = 0.25

    def __init__(self, server: Server, interval_s: float) -> None:
        super().__init__(None, server.pid, interval_s)
        self.pids, self.redis_pid = server.pids or (server.pid,), server.redis_pid
        self.stats_target = server.target
        self.lags: list[tuple[int, float]] = []  # (pid that answered, its last lag in ms)
        self._lag_thread = threading.Thread(target=self._lag_run, name="lag", daemon=True)

    def __enter__(self) -> GroupSampler:
        self.listen_drops = -_listen_drops()
        super().__enter__()
        self._lag_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._lag_thread.join()
        self.listen_drops += _listen_drops()

    def sample(self) -> dict[str, Any]:
        procs = [procstat.sample(pid) for pid in self.pids]
        redis_s = 0.0
        if self.redis_pid > 0:
            ns = procstat.cpu_ns(self.redis_pid)
            if ns is None:
                raise ProcessLookupError(f"no process {self.redis_pid}")
            redis_s = ns / 1e9
        taken = Sample(
            time.time_ns(),
            sum(p.cpu_s for p in procs),
            sum(p.rss_bytes for p in procs),
            procstat.system_busy_s(),
            {"pid_cpu_s": [p.cpu_s for p in procs], "redis_cpu_s": redis_s},
        )
        self.samples.append(taken)
        return taken.row()

    def _lag_run(self) -> None:
        while not self._stop.wait(self.LAG_EVERY_S):
            with contextlib.suppress(OSError, ValueError, KeyError):  # busy: a missed sample
                stats = read_stats(self.stats_target, timeout_s=1.0)
                self.lags.append((int(stats["pid"]), float(stats["loop_lag_ms"]["last_ms"])))


def _listen_drops() -> int:
    """The machine's TcpExt ListenDrops so far (/proc/net/netstat): connections a listening
    socket refused with its accept queue full; each costs the client a SYN retransmit (1 s,
    then 3 s, ...), which is how a saturated server's ramp stretches."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenDrops")])


def _part(samples: Sequence[Sample], cpu: Any) -> list[Sample]:
    """`samples` with `cpu(sample)` as their CPU, for `peak_cores` of one part."""
    return [Sample(s.t_ns, cpu(s), s.rss_bytes, s.busy_s, {}) for s in samples]


def group_cpu(trial: Trial, records: Sequence[TokenArrays], sampler: GroupSampler) -> Trial:
    """What `GroupSampler` adds to a trial: CPU per token of the server processes and of
    Redis over the steady window (and their sum as `cpu_per_token_us`), each process's and
    Redis's busiest second, the supervising parent's share, the load generator's cores and
    the loop lag sampled from /stats."""
    a, b, _ = steady_window(records, sampler)
    tokens, window_s = trial["window_tokens"], trial["window_s"]
    redis_s = b.stats["redis_cpu_s"] - a.stats["redis_cpu_s"]
    has_redis = sampler.redis_pid > 0
    redis_us = 1e6 * redis_s / tokens if tokens and has_redis else math.nan
    samples = sampler.samples
    workers = range(1, len(sampler.pids)) if len(sampler.pids) > 1 else range(1)
    peaks = [peak_cores(_part(samples, lambda s, i=i: s.stats["pid_cpu_s"][i])) for i in workers]
    first, last = samples[0], samples[-1]
    wall_s = (last.t_ns - first.t_ns) / 1e9
    lags = [lag for _, lag in sampler.lags]
    server_us = trial["cpu_per_token_us"]
    # the whole trial (every stream opened, streamed and closed): the same work on every side,
    # comparable where a slow ramp left one side no steady window
    received = trial["tokens_expected"] - trial["tokens_lost"]
    whole_server_s = last.cpu_s - first.cpu_s
    whole_redis_s = last.stats["redis_cpu_s"] - first.stats["redis_cpu_s"]
    return {
        "server_processes": len(workers),
        "whole_cpu_per_token_us": 1e6 * (whole_server_s + whole_redis_s) / max(received, 1),
        "whole_server_cpu_per_token_us": 1e6 * whole_server_s / max(received, 1),
        "whole_redis_cpu_per_token_us": (
            1e6 * whole_redis_s / max(received, 1) if has_redis else math.nan
        ),
        "listen_drops": sampler.listen_drops,
        "server_cpu_per_token_us": server_us,
        "redis_cpu_per_token_us": redis_us,
        "cpu_per_token_us": server_us + (redis_us if has_redis else 0.0),
        "redis_cores": redis_s / window_s if has_redis and window_s > 0 else math.nan,
        "redis_cores_peak_1s": (
            peak_cores(_part(samples, lambda s: s.stats["redis_cpu_s"])) if has_redis else math.nan
        ),
        "worker_cores_peak_1s_max": max(peaks, default=math.nan),
        "worker_cores_peak_1s_min": min(peaks, default=math.nan),
        "supervisor_cpu_s": (
            last.stats["pid_cpu_s"][0] - first.stats["pid_cpu_s"][0]
            if len(sampler.pids) > 1
            else math.nan
        ),
        "client_cores": trial["client_cpu_s"] / wall_s if wall_s > 0 else math.nan,
        "loop_lag_max_ms": max(lags, default=math.nan),
        "loop_lag_p50_ms": float(np.median(lags)) if lags else math.nan,
        "loop_lag_samples": len(lags),
        "loop_lag_processes": len({pid for pid, _ in sampler.lags}),
    }


def peak_cores(samples: Sequence[Sample], span_s: float = 1.0) -> float:
    """The server's highest CPU use over any `span_s` of the trial, in cores: at about 1.0
    its single event loop had no time left."""
    best, j = math.nan, 0
    for i, a in enumerate(samples):
        j = max(j, i)
        while j < len(samples) and samples[j].t_ns - a.t_ns < span_s * 1e9:
            j += 1
        if j == len(samples):
            break
        b = samples[j]
        rate = (b.cpu_s - a.cpu_s) / ((b.t_ns - a.t_ns) / 1e9)
        best = rate if math.isnan(best) else max(best, rate)
    return best


def load(stats: Sequence[WorkerStats], samples: Sequence[Sample], foreign_s: float) -> Trial:
    """The load generator's CPU, how busy the machine was, and what other processes took."""
    first, last = samples[0], samples[-1]
    wall_s = (last.t_ns - first.t_ns) / 1e9
    busy = (last.busy_s - first.busy_s) / wall_s if wall_s else math.nan
    fractions = [s.cpu_fraction for s in stats]
    return {
        "wall_s": wall_s,
        "client_workers": len(stats),
        "client_cpu_s": sum(s.cpu_s for s in stats),
        "client_cpu_max_fraction": max(fractions, default=math.nan),
        "client_saturated": sum(f > SATURATED_CPU_FRACTION for f in fractions),
        "machine_busy_cores_total": busy,
        "machine_saturated": int(busy >= MACHINE_SATURATED * (os.cpu_count() or 1)),
        "other_cores": foreign_s / wall_s if wall_s else 0.0,
        "server_rss_max_bytes": max(s.rss_bytes for s in samples),
        "server_cores_peak_1s": peak_cores(samples),
    }


def drink_trial(server: Server, transport: str, tokens: int, rate: float) -> Trial:
    """One stream of `tokens` at `rate` read by the sink (`uvloop` in this process)."""
    import uvloop

    params = GenParams(tokens=tokens, rate=rate, ttft_ms=0)
    foreign0, a = foreign_cpu(), take(server.pid)
    drunk = uvloop.run(sink.drink(server.target, transport, params))
    b, foreign_s = take(server.pid), foreign_delta_s(foreign0, foreign_cpu())
    wall_s, cpu_s = drunk.wall_s, b.cpu_s - a.cpu_s
    machine_s = (b.t_ns - a.t_ns) / 1e9
    return {
        "tokens_expected": tokens,
        "tokens_lost": tokens - drunk.tokens,
        "requested_rate": rate,
        "tokens_per_s": drunk.tokens / wall_s,
        "cpu_per_token_us": 1e6 * cpu_s / max(drunk.tokens, 1),
        "server_cores": cpu_s / wall_s,
        "reader_cpu_fraction": drunk.reader_cpu_s / wall_s,
        "client_saturated": int(drunk.reader_cpu_s / wall_s > 0.9),
        "bytes_down_per_token": drunk.bytes_down / max(drunk.tokens, 1),
        "wall_s": wall_s,
        "other_cores": foreign_s / machine_s,
    }


def idle_trial(side: str, gc_policy: str, transport: str, n: int, warmup: int = 50) -> Trial:
    """RSS growth per connection of a fresh server holding `n` streams that send nothing."""
    import uvloop

    params = GenParams(tokens=20, rate=20, ttft_ms=60_000)  # first token: in a minute
    with running([side], gc_policy) as servers:
        server = servers[side]
        return uvloop.run(_hold_idle(server, transport, params, n, warmup))


async def _hold_idle(
    server: Server, transport: str, params: GenParams, n: int, warmup: int
) -> Trial:
    warm = sink.IdleConnections()  # the code paths and first allocations, then a baseline
    await warm.open(server.target, transport, params, warmup)
    warm.close()
    before = await _settled_rss(server.pid)
    idle = sink.IdleConnections()
    t0 = time.perf_counter()
    await idle.open(server.target, transport, params, n)
    open_s = time.perf_counter() - t0
    after = await _settled_rss(server.pid)
    reported = await asyncio.to_thread(_reported_open, server, transport)
    idle.close()
    return {
        "connections": n,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_connection": (after - before) / n,
        "open_s": open_s,
        "server_reported_open": reported,
    }


async def _settled_rss(pid: int) -> int:
    """The median of three RSS samples 0.2 s apart, after 0.3 s to let the server settle."""
    await asyncio.sleep(0.3)
    values = []
    for _ in range(3):
        values.append(procstat.sample(pid).rss_bytes)
        await asyncio.sleep(0.2)
    return sorted(values)[1]


def _reported_open(server: Server, transport: str) -> int:
    """What pushlab's GET /stats says is open for `transport` (-1 for the bare servers)."""
    if server.side != "pushlab":
        return -1
    stats = read_stats(server.target, timeout_s=10)
    return int(stats["transports"].get(transport, {}).get("open", 0))
