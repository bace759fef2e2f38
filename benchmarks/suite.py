"""The benchmarks: each measures pushlab's server against a bare reference in the same run.

Every benchmark runs both servers side by side (idle while the other is measured), warms
each one up, then repeats its trials `reps` times, alternating which side goes first, so a
drift of the machine does not favour one side. `measure(names, profile)` returns the trials
as plain dicts; it prints nothing (progress goes to a callback) and writes nothing.

| name | issue target | what |
|---|---|---|
| `raw_ceiling` | context | one unpaced SSE stream: raw asyncio.Protocol vs bare aiohttp |
| `throughput` | 2 | one unpaced stream per transport: pushlab vs bare aiohttp |
| `idle_memory` | 5 | RSS per idle SSE / WebSocket connection, fresh server each time |
| `longpoll` | 6 | server CPU per long-poll request, one token per response |
| `streams1000` | 1, 3, 13.6 | 1,000 streams x 20 tokens/s, SSE and WebSocket, per GC policy |
| `streams5000` | 4 | 5,000 SSE streams x 10 tokens/s, per GC policy |
| `h2_throughput` | h2 | pushlab's HTTP/2 client vs its HTTP/1.1 client, one SSE stream via nginx |
| `redis_log` | 13a | streams1000's SSE load: pushlab on the Redis log vs the in-memory hub |
| `streams5000_workers` | 13b | streams5000's load: `--workers 2` on the Redis log vs one process |
| `abuse` | 14 | one client's attacks (benchmarks/abuse.py): values against limits, no reference |
| `webtransport` | wt | 100 WebTransport sessions vs 100 WebSocket streams x 20 tokens/s |
| `webtransport_sweep` | wt | the same by load (5-100 sessions), clients over the worker processes |
| `quic_delay` | quic | HTTP/3 via Caddy: a 40 ms one-way UDP delay seen in token latency |

`streams1000` on SSE also measures the peer stack (`benchmarks/peer.py`, FastAPI +
sse-starlette on uvicorn) as a second reference: issue 13's token latency p50 target.

`redis_log` and `streams5000_workers` compare pushlab with itself: the reference is the
one-process in-memory hub (side `pushlab`), the value `pushlab+redis` (one process, `--log`
on a real redis-server started for the block) or `pushlab-w2+redis` (`--workers 2` on it).
Their CPU per token is every server process's plus Redis's (`trials.GroupSampler`); the
in-memory side is sampled the same way, so both pay the same /stats polling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Sequence

from benchmarks.procs import Server, running
from benchmarks.trials import Trial, drink_trial, fleet_trial, idle_trial
from clients.fleet import FleetPool, FleetSpec
from harness.procstat import wait_quiet
from streams.params import GenParams

PUSHLAB_MAX_RATE = 100_000.0  # the highest `rate` pushlab accepts (docs/PROTOCOL.md)
UNPACED_RATE = 1e9  # the bare servers take any rate: every token is due at once
PAIR = ("pushlab", "bare")
TRIO = ("pushlab", "bare", "peer")  # the peer stack (benchmarks/peer.py) serves SSE only
REDIS_PAIR = ("pushlab", "pushlab+redis")  # the in-memory hub vs the Redis log, one process
WORKERS_PAIR = ("pushlab", "pushlab-w2+redis")  # one process vs --workers 2 on the Redis log
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big each benchmark is; `FULL` is the default run, `QUICK` a smoke-sized one."""

    name: str = "full"
    reps: int = 2
    workers: int = 2  # load-generator processes for the fleets
    ttft_ms: float = 100.0
    streams: int = 1000
    stream_tokens: int = 100
    stream_rate: float = 20.0
    stream_stagger_ms: float = 1.0
    scale_streams: int = 5000
    scale_tokens: int = 50
    scale_rate: float = 10.0
    scale_stagger_ms: float = 0.4
    throughput_tokens: int = 50_000
    throughput_reps: int = 5
    idle_connections: int = 1000
    poll_streams: int = 200
    poll_tokens: int = 40
    poll_rate: float = 10.0
    poll_stagger_ms: float = 2.5
    gc_policies: tuple[str, ...] = ("scheduled", "auto")  # for the fleets at scale
    default_gc: str = "auto"  # for the single-connection, memory and polling benchmarks
    scale_client: str = "light"  # streams1000/5000: "light" readers or pushlab's "python" ones
    h2_tokens: int = 20_000  # h2_throughput: one stream's tokens, at pushlab's highest rate
    h2_reps: int = 5
    peer: bool = True  # streams1000 on SSE also measures the peer stack (benchmarks/peer.py)
    abuse_sizes: str = "issue"  # abuse: the issue's sizes, or "toy" (benchmarks.abuse.TOY)
    wt_sessions: int = 100  # webtransport: sessions, and as many WebSocket streams
    wt_tokens: int = 200  # webtransport: tokens per stream (10 s at 20/s; the ramp takes 5)
    wt_rate: float = 20.0
    wt_reps: int = 2
    # webtransport_sweep: these loads (sessions x wt_rate), both sides, clients over `workers`
    wt_sweep: tuple[int, ...] = (5, 10, 25, 50, 100)
    wt_sweep_reps: int = 2
    delay_streams: int = 10  # quic_delay: HTTP/3 streams per arm, one connection each
    delay_tokens: int = 100
    delay_rate: float = 20.0
    delay_reps: int = 3


FULL = Profile()
QUICK = Profile(
    name="quick",
    reps=1,
    streams=100,
    stream_tokens=30,
    scale_streams=300,
    scale_tokens=20,
    scale_stagger_ms=1.0,
    throughput_tokens=20_000,  # CPU time comes in 10 ms ticks: keep each trial >= 60 ms
    throughput_reps=1,
    idle_connections=100,
    poll_streams=20,
    poll_tokens=10,
    poll_stagger_ms=5.0,
    gc_policies=("scheduled",),
    h2_tokens=5000,
    h2_reps=1,
    abuse_sizes="toy",
    wt_sessions=10,
    wt_tokens=20,
    wt_reps=1,
    wt_sweep=(2, 4),
    wt_sweep_reps=1,
    delay_streams=2,
    delay_tokens=20,
    delay_reps=1,
)


@dataclasses.dataclass
class Ctx:
    """What every benchmark runs with: the profile, the load-generator pool, where progress
    lines go, and how long to wait for other processes to go quiet before each trial."""

    profile: Profile
    fleet: FleetPool
    progress: Progress = print
    quiet_s: float = 0.0

    def record(self, labels: Trial, measure: Callable[[], Trial]) -> Trial:
        """Wait for quiet (if asked), run one trial, label it, report it."""
        background = wait_quiet(self.quiet_s) if self.quiet_s > 0 else math.nan
        trial = {**labels, **measure(), "background_cores_before": background}
        self.progress(_line(trial))
        return trial


def _order(sides: Sequence[str], rep: int) -> list[str]:
    """Even repetitions in the given order, odd ones reversed (pushlab last, then first)."""
    return list(sides) if rep % 2 == 0 else list(reversed(sides))


def _label(name: str, side: str, transport: str, policy: str, rep: int, pos: int) -> Trial:
    """The keys that say which trial a row is."""
    return {
        "benchmark": name,
        "side": side,
        "transport": transport,
        "gc": policy,
        "rep": rep,
        "position": pos,
    }


def _warm(ctx: Ctx, servers: Iterable[Server], transport: str, client: str) -> None:
    """A few short streams per server before anything is recorded."""
    spec = FleetSpec(transport, 20, workers=ctx.fleet.workers, uvloop=True)
    params = GenParams(tokens=20, rate=200.0, ttft_ms=0.0)
    for server in servers:
        if client == "light":
            ctx.fleet.run_light(spec, server.target, params)
        else:
            ctx.fleet.run(spec, server.target, params)


def _fleets(
    ctx: Ctx,
    name: str,
    transports: Sequence[str],
    policies: Sequence[str],
    shape: tuple[int, GenParams, float],
    client: str,
    sides: Callable[[str], Sequence[str]] = lambda transport: PAIR,
    grouped: bool = False,
) -> list[Trial]:
    """`shape` = (clients, params, stagger_ms) for every transport and GC policy; `sides`
    says which servers each transport is measured on; `grouped`: see `trials.fleet_trial`."""
    clients, params, stagger_ms = shape
    everyone = list(dict.fromkeys(side for t in transports for side in sides(t)))
    out = []
    for policy in policies:
        with running(everyone, policy) as servers:
            for transport in transports:
                measured = sides(transport)
                _warm(ctx, [servers[side] for side in measured], transport, client)
                for rep in range(ctx.profile.reps):
                    for pos, side in enumerate(_order(measured, rep)):
                        args = (ctx.fleet, servers[side], transport, clients, params, stagger_ms)
                        run = functools.partial(fleet_trial, *args, client, grouped)
                        labels = _label(name, side, transport, policy, rep, pos)
                        out.append(ctx.record(labels, run))
    return out


def streams1000(ctx: Ctx) -> list[Trial]:
    p = ctx.profile
    params = GenParams(tokens=p.stream_tokens, rate=p.stream_rate, ttft_ms=p.ttft_ms)
    shape = (p.streams, params, p.stream_stagger_ms)
    transports = ("sse", "websocket")

    def sides(transport: str) -> Sequence[str]:
        return TRIO if transport == "sse" and p.peer else PAIR

    return _fleets(ctx, "streams1000", transports, p.gc_policies, shape, p.scale_client, sides)


def streams5000(ctx: Ctx) -> list[Trial]:
    p = ctx.profile
    params = GenParams(tokens=p.scale_tokens, rate=p.scale_rate, ttft_ms=p.ttft_ms)
    shape = (p.scale_streams, params, p.scale_stagger_ms)
    return _fleets(ctx, "streams5000", ("sse",), p.gc_policies, shape, p.scale_client)


def redis_log(ctx: Ctx) -> list[Trial]:
    """streams1000's SSE load on pushlab with the Redis log against the in-memory hub."""
    p = ctx.profile
    params = GenParams(tokens=p.stream_tokens, rate=p.stream_rate, ttft_ms=p.ttft_ms)
    shape = (p.streams, params, p.stream_stagger_ms)
    return _fleets(ctx, "redis_log", ("sse",), p.gc_policies, shape, p.scale_client,
                   lambda transport: REDIS_PAIR, grouped=True)  # fmt: skip


def streams5000_workers(ctx: Ctx) -> list[Trial]:
    """streams5000's load on `--workers 2` sharing the Redis log against one in-memory process."""
    p = ctx.profile
    params = GenParams(tokens=p.scale_tokens, rate=p.scale_rate, ttft_ms=p.ttft_ms)
    shape = (p.scale_streams, params, p.scale_stagger_ms)
    return _fleets(ctx, "streams5000_workers", ("sse",), p.gc_policies, shape, p.scale_client,
                   lambda transport: WORKERS_PAIR, grouped=True)  # fmt: skip


def longpoll(ctx: Ctx) -> list[Trial]:
    """Long polling with pushlab's own client (one token per poll: the poll rate is low)."""
    p = ctx.profile
    params = GenParams(tokens=p.poll_tokens, rate=p.poll_rate, ttft_ms=p.ttft_ms)
    shape = (p.poll_streams, params, p.poll_stagger_ms)
    return _fleets(ctx, "longpoll", ("longpoll",), (p.default_gc,), shape, "python")


def _fastest(side: str) -> float:
    """The rate that asks `side` for its tokens as fast as it allows."""
    return PUSHLAB_MAX_RATE if side == "pushlab" else UNPACED_RATE


def _drinks(ctx: Ctx, name: str, sides: Sequence[str], transports: Sequence[str]) -> list[Trial]:
    p, out = ctx.profile, []
    with running(sides, p.default_gc) as servers:
        for transport in transports:
            for side in sides:  # warm-up, not recorded
                drink_trial(servers[side], transport, 5000, _fastest(side))
            for rep in range(p.throughput_reps):
                for pos, side in enumerate(_order(sides, rep)):
                    args = (servers[side], transport, p.throughput_tokens, _fastest(side))
                    labels = _label(name, side, transport, p.default_gc, rep, pos)
                    out.append(ctx.record(labels, functools.partial(drink_trial, *args)))
    return out


def throughput(ctx: Ctx) -> list[Trial]:
    return _drinks(ctx, "throughput", PAIR, ("sse", "websocket", "ndjson"))


def raw_ceiling(ctx: Ctx) -> list[Trial]:
    return _drinks(ctx, "raw_ceiling", ("raw", "bare"), ("sse",))


def idle_memory(ctx: Ctx) -> list[Trial]:
    p, out = ctx.profile, []
    for transport in ("sse", "websocket"):
        for rep in range(p.reps):
            for pos, side in enumerate(_order(PAIR, rep)):
                args = (side, p.default_gc, transport, p.idle_connections)
                labels = _label("idle_memory", side, transport, p.default_gc, rep, pos)
                out.append(ctx.record(labels, functools.partial(idle_trial, *args)))
    return out


def h2_throughput(ctx: Ctx) -> list[Trial]:
    """HTTP/2 against HTTP/1.1 in pushlab's own client (`benchmarks.h2_throughput`)."""
    from benchmarks import h2_throughput as h2t

    return h2t.measure(ctx.profile.h2_tokens, ctx.profile.h2_reps, ctx.record)


def abuse(ctx: Ctx) -> list[Trial]:
    """Issue 14's probes of one client against the server (`benchmarks.abuse`)."""
    from benchmarks import abuse as probes

    sizes = probes.TOY if ctx.profile.abuse_sizes == "toy" else probes.ISSUE
    return probes.measure(sizes, ctx.record)


def webtransport(ctx: Ctx) -> list[Trial]:
    """WebTransport against WebSocket on one server (`benchmarks.webtransport`)."""
    from benchmarks import webtransport as wt

    p = ctx.profile
    return wt.measure(p.wt_sessions, p.wt_tokens, p.wt_rate, p.wt_reps, ctx.record)


def webtransport_sweep(ctx: Ctx) -> list[Trial]:
    """`webtransport` by load, the clients over the pool's workers (`benchmarks.webtransport`)."""
    from benchmarks import webtransport as wt

    p = ctx.profile
    return wt.measure_sweep(p.wt_sweep, p.wt_tokens, p.wt_rate, p.wt_sweep_reps, ctx.fleet,
                            ctx.record)  # fmt: skip


def quic_delay(ctx: Ctx) -> list[Trial]:
    """A one-way UDP delay seen in HTTP/3 token latency (`benchmarks.quic_delay`)."""
    from benchmarks import quic_delay as qd

    p = ctx.profile
    return qd.measure(p.delay_streams, p.delay_tokens, p.delay_rate, p.delay_reps, ctx.record)


BENCHMARKS: dict[str, Callable[[Ctx], list[Trial]]] = {
    "raw_ceiling": raw_ceiling,
    "throughput": throughput,
    "idle_memory": idle_memory,
    "longpoll": longpoll,
    "streams1000": streams1000,
    "streams5000": streams5000,
    "h2_throughput": h2_throughput,
    "redis_log": redis_log,
    "streams5000_workers": streams5000_workers,
    "abuse": abuse,
    "webtransport": webtransport,
    "webtransport_sweep": webtransport_sweep,
    "quic_delay": quic_delay,
}


def measure(
    names: Sequence[str], profile: Profile, progress: Progress = print, quiet_s: float = 0.0
) -> list[Trial]:
    """Every trial of the named benchmarks, in the order of BENCHMARKS. With `quiet_s`, each
    trial first waits up to that long for other processes to use under 0.25 cores."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    trials: list[Trial] = []
    with FleetPool(profile.workers) as fleet:
        ctx = Ctx(profile, fleet, progress, quiet_s)
        for name, bench in BENCHMARKS.items():
            if name in names:
                trials += bench(ctx)
    return trials


_SHOW = (
    ("cpu_per_token_us", "{:.1f} us/token"),
    ("redis_cpu_per_token_us", "of which Redis {:.1f}"),
    ("cpu_per_request_us", "{:.0f} us/request"),
    ("tokens_per_s", "{:,.0f} tokens/s"),
    ("bytes_per_connection", "{:,.0f} B/conn"),
    ("delivered_pct", "delivered {:.2f}%"),
    ("latency_p99_ms", "p99 {:.1f} ms"),
    ("latency_count", "n={:,.0f}"),
    ("added_ms", "delay seen {:.2f} ms"),
    ("worker_cores_peak_1s_max", "busiest process {:.2f} cores"),
    ("redis_cores", "Redis {:.2f} cores"),
    ("other_cores", "other load {:.2f} cores"),
    ("rss_peak_bytes", "RSS peak {:,.0f} B"),
    ("victim_refused", "victim refused {:d}"),
)


def _line(t: Trial) -> str:
    """One progress line for a trial."""
    head = f"{t['benchmark']:<12} {t['side']:<8} {t['transport']:<9} gc={t['gc']:<9} rep={t['rep']}"
    skip = "cpu_per_token_us" if t["transport"] == "longpoll" else "cpu_per_request_us"
    shown = [fmt.format(t[k]) for k, fmt in _SHOW if k in t and k != skip and t[k] == t[k]]
    return head + "  " + ", ".join(shown)
