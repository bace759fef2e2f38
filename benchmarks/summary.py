"""From trials to the issue's targets: medians over repetitions, spreads, ratios, verdicts.

Pure functions over the trial dicts of `benchmarks.suite.measure` (or a stored JSON file).
A target's value is pushlab's median over repetitions (the minimum for "delivered", where
every repetition must deliver everything), its reference the bare server's, the ratio
value / reference, and the ratio's range is over the repetitions paired by their index.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.trials import Trial

OTHER_LOAD_WARN_CORES = 0.25  # other processes busier than this during a trial: say so


@dataclasses.dataclass(frozen=True)
class Goal:
    """What one target row checks: `on` "ratio" or "value", `op` "<=", "<" or ">="."""

    target: str  # the number, or "context"
    title: str
    benchmark: str
    metric: str
    unit: str
    on: str
    op: str
    limit: float
    transports: tuple[str, ...]
    policies: tuple[str, ...] | None = None  # None: every policy measured
    agg: str = "median"
    side: str = "pushlab"
    reference: str = "bare"  # "": a value against its limit alone (the abuse probes)
    # more than one reference: the row compares with the best of them (the lowest median; the
    # row names it), and exists only where every one of them was measured
    best_of: tuple[str, ...] = ()
    # metrics that say what limited a missed row, each side's spread ("what limits" text)
    explain: tuple[str, ...] = ()


# what the "what limits" text calls each `Goal.explain` metric (benchmarks/trials.py group_cpu)
EXPLAIN_LABELS = {
    "worker_cores_peak_1s_max": "busiest server process at its busiest second (cores)",
    "worker_cores_peak_1s_min": "least busy server process at its busiest second (cores)",
    "server_cores": "server processes together, steady window or whole trial (cores)",
    "redis_cores": "Redis, steady window or whole trial (cores)",
    "redis_cores_peak_1s": "Redis at its busiest second (cores)",
    "supervisor_cpu_s": "the --workers parent over the trial (CPU s)",
    "client_cores": "load generator (cores, 2 processes)",
    "machine_busy_cores_total": "whole machine busy (cores of 2)",
    "other_cores": "other processes (cores)",
    "loop_lag_max_ms": "loop lag, highest of the /stats samples (ms)",
    "whole_server_cpu_per_token_us": "server processes' CPU per token, whole trial (us)",
    "whole_redis_cpu_per_token_us": "Redis's CPU per token, whole trial (us)",
    "listen_drops": "connections dropped with an accept queue full (TcpExt ListenDrops)",
    "duration_ratio_max": "slowest stream's duration / ideal",
    "latency_count": "token latencies measured",
    "steady_p99_ms": "token latency p99 while every stream was open (ms)",
    "steady_count": "token latencies while every stream was open",
    "client_process_cores": "the clients, one process (cores)",
    "server_lag_p90_ms": "server event-loop lag, p90 of 0.2 s samples (ms)",
    "server_lag_max_ms": "server event-loop lag, highest sample (ms)",
    "client_lag_p90_ms": "clients' event-loop lag, p90 (ms)",
    "client_lag_max_ms": "clients' event-loop lag, highest (ms)",
    "client_worker_cores_max": "busiest client worker process (cores)",
    "server_sys_share": "server CPU in the kernel (share of its CPU)",
    "latency_p50_ms": "token latency p50 (ms)",
    "cpu_per_token_us": "server CPU per token, whole trial (us)",
    "added_ms": "median latency with the delay minus without (ms)",
    "direct_p50_ms": "median latency straight to Caddy (ms)",
    "delayed_p50_ms": "median latency through the relay (ms)",
    "delayed_count": "token latencies through the relay",
}
CPU_EXPLAIN = ("whole_server_cpu_per_token_us", "whole_redis_cpu_per_token_us",
               "worker_cores_peak_1s_max", "server_cores", "redis_cores", "client_cores",
               "machine_busy_cores_total", "other_cores", "loop_lag_max_ms", "listen_drops",
               "duration_ratio_max")  # fmt: skip
SCALE_EXPLAIN = ("worker_cores_peak_1s_max", "worker_cores_peak_1s_min", "server_cores",
                 "redis_cores", "supervisor_cpu_s", "client_cores", "machine_busy_cores_total",
                 "other_cores", "loop_lag_max_ms", "listen_drops")  # fmt: skip


S1000 = "{streams:,} streams x {stream_rate:g} tokens/s"
S5000 = "{scale_streams:,} SSE streams x {scale_rate:g} tokens/s"
BOTH = ("sse", "websocket")
RS, WS, MEM = "pushlab+redis", "pushlab-w2+redis", "pushlab"  # redis_log, streams5000_workers
W2 = f"{S5000}, 2 server processes on the Redis log"
# Issue 14 (benchmarks/abuse.py): each a value against a limit, no reference server.
SETTINGS = {"pushlab": "default settings", "pushlab --max-streams 10": "--max-streams 10"}
NONREADER_SIDES = tuple(SETTINGS)


def _nonreader_goals(side: str) -> tuple[Goal, ...]:
    """The never-reader probe's rows for the server settings `side`."""
    where, both = SETTINGS[side], ("sse", "ndjson")
    verdict = "14" if side == "pushlab" else "context"  # the issue asks it of the defaults
    return (
        Goal("14", "server RSS per never-reading connection beyond as many reading ones of "
             f"the same streams (held tokens' difference removed; socket buffers are outside "
             f"RSS), {where}", "abuse_nonreader", "unread_cost_per_conn_bytes", "bytes",
             "value", "<=", 2e6, both, side=side, reference=""),
        Goal("14", f"hub's held-token bytes at their peak over its budget, {where}",
             "abuse_nonreader", "held_peak_over_budget", "x", "value", "<=", 1.0, both,
             side=side, reference=""),
        Goal("context", f"one client's held-token bytes at their peak over its share of the "
             f"budget, {where}", "abuse_nonreader", "held_peak_over_client_share", "x",
             "value", "<=", math.inf, both, side=side, reference=""),
        Goal("context", f"server RSS growth per never-reading connection, held tokens "
             f"included, {where}", "abuse_nonreader", "rss_growth_per_conn_bytes", "bytes",
             "value", "<=", math.inf, both, side=side, reference=""),
        Goal("14", "never-reading connection: from its last write progress to its close, "
             f"beyond the write timeout, {where}", "abuse_nonreader", "closed_late_s", "s",
             "value", "<=", 0.5, both, side=side, reference=""),
        Goal(verdict, f"victim streams refused while never-reading connections are held, "
             f"{where}", "abuse_nonreader", "victim_refused", "streams", "value", "<=", 0.0,
             both, side=side, reference=""),
    )  # fmt: skip


# "Small constant" for /v1 is our reading, the issue gives no number: a 128-character model
# may make the body per token-text byte at most 4x what a usual model name gives. A close
# "beyond the timeout" is allowed 0.5 s: the sampler sees a socket every 0.1 s, and the
# server's loop may be late by as much while it generates for the attacker.
ABUSE_GOALS = (
    Goal("14", "/v1 body bytes per token-text byte, a 128-character model over a usual one "
         "(the most of streamed and whole)", "abuse_v1", "model128_growth_max", "x", "value",
         "<=", 4.0, ("openai",), reference=""),
    Goal("context", "/v1 body bytes per token-text byte, the most of any request tried",
         "abuse_v1", "bytes_per_text_byte_max", "x", "value", "<=", math.inf, ("openai",),
         reference=""),
    *(g for side in NONREADER_SIDES for g in _nonreader_goals(side)),
    Goal("14", "hub's held-token bytes at their peak over its budget, long polls never polled",
         "abuse_longpoll", "held_peak_over_budget", "x", "value", "<=", 1.0, ("longpoll",),
         reference=""),
    Goal("context", "one client's held-token bytes at their peak over its share of the "
         "budget, long polls never polled", "abuse_longpoll", "held_peak_over_client_share",
         "x", "value", "<=", math.inf, ("longpoll",), reference=""),
    Goal("context", "victim streams refused while long polls fill memory", "abuse_longpoll",
         "victim_refused", "streams", "value", "<=", 0.0, ("longpoll",), reference=""),
    Goal("14", "victim streams refused during one client's fill of one-token creates",
         "abuse_fill", "victim_refused_during", "streams", "value", "<=", 0.0, ("longpoll",),
         reference=""),
    Goal("14", "victim streams refused after one client's fill of one-token creates",
         "abuse_fill", "victim_refused", "streams", "value", "<=", 0.0, ("longpoll",),
         reference=""),
    Goal("14", "victim streams refused while slowloris connections are held",
         "abuse_slowloris", "victim_refused", "streams", "value", "<=", 0.0, ("http",),
         reference=""),
    Goal("14", "slowloris connections still open after the header timeout (+10 s)",
         "abuse_slowloris", "not_closed", "connections", "value", "<=", 0.0, ("http",),
         reference=""),
    Goal("14", "slowloris connection: from its connect to its close, beyond the header "
         "timeout", "abuse_slowloris", "closed_late_s", "s", "value", "<=", 0.5, ("http",),
         reference=""),
)  # fmt: skip
# The QUIC issue: WebTransport (benchmarks/webtransport.py) and HTTP/3 under a one-way delay
# (benchmarks/quic_delay.py).
WT = "{wt_sessions:,} sessions x {wt_rate:g} tokens/s"
# the loads a sweep may measure, as benchmarks.webtransport.sweep_label names them
WT_SWEEP = tuple(f"{n} sessions" for n in (2, 4, 5, 10, 25, 50, 75, 100, 150, 200))
QUIC_GOALS = (
    Goal("wt", f"delivered, WebTransport (stream delivery), {WT}", "webtransport",
         "delivered_pct", "%", "value", ">=", 100.0, ("webtransport",), agg="min",
         side="webtransport", reference="websocket"),
    Goal("wt", f"p99 token latency, WebTransport against WebSocket, {WT}, one server",
         "webtransport", "latency_p99_ms", "ms", "ratio", "<=", 2.0, ("webtransport",),
         side="webtransport", reference="websocket",
         explain=("latency_count", "latency_p50_ms", "steady_p99_ms", "steady_count",
                  "cpu_per_token_us", "server_cores",
                  "client_process_cores", "server_lag_p90_ms", "server_lag_max_ms",
                  "client_lag_p90_ms", "client_lag_max_ms", "duration_ratio_max",
                  "other_cores")),
    Goal("context", f"p99 token latency while every stream was open (no handshake running), "
         f"WebTransport against WebSocket, {WT}", "webtransport", "steady_p99_ms", "ms",
         "ratio", "<=", math.inf, ("webtransport",), side="webtransport",
         reference="websocket"),
    Goal("context", f"server CPU per token, WebTransport against WebSocket, {WT}",
         "webtransport", "cpu_per_token_us", "us/token", "ratio", "<=", math.inf,
         ("webtransport",), side="webtransport", reference="websocket"),
    # the sweep (benchmarks.webtransport.measure_sweep): one row per load measured, its
    # `transport` the load's label (`sweep_label`)
    Goal("wt", "p99 token latency, WebTransport against WebSocket, by load x {wt_rate:g} "
         "tokens/s, one server, clients over {workers} processes", "webtransport_sweep",
         "latency_p99_ms", "ms", "ratio", "<=", 2.0, WT_SWEEP, side="webtransport",
         reference="websocket",
         explain=("latency_count", "steady_p99_ms", "steady_count", "cpu_per_token_us",
                  "server_cores", "server_lag_p90_ms", "client_cores",
                  "client_worker_cores_max", "client_lag_p90_ms", "other_cores")),
    Goal("context", "p99 token latency while every stream was open, WebTransport against "
         "WebSocket, by load x {wt_rate:g} tokens/s, clients over {workers} processes",
         "webtransport_sweep", "steady_p99_ms", "ms", "ratio", "<=", math.inf, WT_SWEEP,
         side="webtransport", reference="websocket"),
    Goal("context", "server CPU per token, WebTransport against WebSocket, by load x "
         "{wt_rate:g} tokens/s", "webtransport_sweep", "cpu_per_token_us", "us/token",
         "ratio", "<=", math.inf, WT_SWEEP, side="webtransport", reference="websocket"),
    Goal("quic", "HTTP/3 median token latency, 40 ms one-way UDP delay minus none: distance "
         "from 40 ms", "quic_delay", "delay_error_ms", "ms", "value", "<=", 2.0, ("sse",),
         side="h3", reference="",
         explain=("added_ms", "direct_p50_ms", "delayed_p50_ms", "delayed_count",
                  "other_cores")),
    Goal("context", "HTTP/3 median token latency, with the 40 ms one-way delay minus without",
         "quic_delay", "added_ms", "ms", "value", "<=", math.inf, ("sse",), side="h3",
         reference=""),
)  # fmt: skip
GOALS = (
    Goal("1", f"server CPU per token, {S1000}", "streams1000", "cpu_per_token_us", "us/token",
         "ratio", "<=", 1.25, BOTH),
    Goal("2", "single-connection throughput, unpaced", "throughput", "tokens_per_s",
         "tokens/s", "ratio", ">=", 0.6, ("sse", "websocket", "ndjson")),
    Goal("3", f"delivered, {S1000}", "streams1000", "delivered_pct", "%",
         "value", ">=", 100.0, BOTH, agg="min"),
    Goal("3", f"slowest stream's duration / ideal, {S1000}", "streams1000",
         "duration_ratio_max", "x", "value", "<=", 1.05, BOTH),
    Goal("3", f"p99 token latency, {S1000}", "streams1000", "latency_p99_ms", "ms",
         "value", "<=", 10.0, BOTH),
    Goal("4", f"delivered, {S5000}", "streams5000", "delivered_pct", "%",
         "value", ">=", 100.0, ("sse",), agg="min"),
    Goal("4", f"p99 token latency, {S5000}", "streams5000", "latency_p99_ms", "ms",
         "value", "<", 100.0, ("sse",)),
    Goal("5", "idle memory per connection ({idle_connections:,} open)", "idle_memory",
         "bytes_per_connection", "bytes", "ratio", "<=", 1.2, BOTH),
    Goal("6", "server CPU per long-poll request", "longpoll", "cpu_per_request_us",
         "us/request", "ratio", "<=", 1.25, ("longpoll",)),
    Goal("13.6", f"p50 token latency, {S1000}, against the best of bare aiohttp and "
         "FastAPI + sse-starlette", "streams1000", "latency_p50_ms", "ms", "ratio", "<=", 1.5,
         ("sse",), best_of=("bare", "peer")),
    Goal("context", f"p99 token latency, {S1000} (reference: FastAPI + sse-starlette)",
         "streams1000", "latency_p99_ms", "ms", "value", "<=", math.inf, ("sse",),
         reference="peer"),
    Goal("context", f"server CPU per token, {S1000} (reference: FastAPI + sse-starlette)",
         "streams1000", "cpu_per_token_us", "us/token", "ratio", "<=", math.inf, ("sse",),
         reference="peer"),
    Goal("context", f"p99 lateness against the schedule (client clock), {S1000}",
         "streams1000", "lateness_p99_ms", "ms", "value", "<=", math.inf, BOTH),
    Goal("context", f"p99 lateness against the schedule (client clock), {S5000}",
         "streams5000", "lateness_p99_ms", "ms", "value", "<=", math.inf, ("sse",)),
    Goal("context", f"slowest stream's duration / ideal, {S5000}", "streams5000",
         "duration_ratio_max", "x", "value", "<=", math.inf, ("sse",)),
    Goal("context", "raw asyncio write+drain ceiling (reference: bare aiohttp)", "raw_ceiling",
         "tokens_per_s", "tokens/s", "ratio", ">=", 0.0, ("sse",), side="raw"),
    Goal("h2", "HTTP/2 client single-connection throughput through nginx with TLS "
         "(reference: the HTTP/1.1 client)", "h2_throughput", "tokens_per_s", "tokens/s",
         "ratio", ">=", 0.5, ("sse",), side="h2", reference="h1"),
    Goal("13a", f"CPU per token over the whole trial, server + Redis, Redis log vs in-memory "
         f"hub, {S1000}", "redis_log", "whole_cpu_per_token_us", "us/token", "ratio", "<=", 1.5,
         ("sse",), explain=CPU_EXPLAIN, side=RS, reference=MEM),
    Goal("context", f"server processes' CPU per token only, whole trial, Redis log vs in-memory "
         f"hub, {S1000}", "redis_log", "whole_server_cpu_per_token_us", "us/token", "ratio",
         "<=", math.inf, ("sse",), side=RS, reference=MEM),
    Goal("context", f"Redis's CPU per token, whole trial, {S1000}", "redis_log",
         "whole_redis_cpu_per_token_us", "us/token", "value", "<=", math.inf, ("sse",), side=RS,
         reference=MEM),
    Goal("context", f"CPU per token, server + Redis, steady window where there was one, {S1000}",
         "redis_log", "cpu_per_token_us", "us/token", "ratio", "<=", math.inf, ("sse",), side=RS,
         reference=MEM),
    Goal("context", f"delivered, Redis log, {S1000}", "redis_log", "delivered_pct", "%",
         "value", ">=", math.inf, ("sse",), agg="min", side=RS, reference=MEM),
    Goal("context", f"p99 token latency, Redis log, {S1000}", "redis_log", "latency_p99_ms",
         "ms", "value", "<=", math.inf, ("sse",), side=RS, reference=MEM),
    Goal("13b", f"delivered, {W2}", "streams5000_workers", "delivered_pct", "%", "value", ">=",
         100.0, ("sse",), agg="min", explain=SCALE_EXPLAIN, side=WS, reference=MEM),
    Goal("13b", f"p99 token latency, {W2}", "streams5000_workers", "latency_p99_ms", "ms",
         "value", "<", 100.0, ("sse",), explain=SCALE_EXPLAIN, side=WS, reference=MEM),
    Goal("context", f"CPU per token, server processes + Redis, {W2} (reference: one in-memory "
         "process)", "streams5000_workers", "cpu_per_token_us", "us/token", "ratio", "<=",
         math.inf, ("sse",), side=WS, reference=MEM),
    Goal("context", f"slowest stream's duration / ideal, {W2}", "streams5000_workers",
         "duration_ratio_max", "x", "value", "<=", math.inf, ("sse",), side=WS, reference=MEM),
    Goal("context", f"p99 lateness against the schedule (client clock), {W2}",
         "streams5000_workers", "lateness_p99_ms", "ms", "value", "<=", math.inf, ("sse",),
         side=WS, reference=MEM),
    *ABUSE_GOALS,
    *QUIC_GOALS,
)  # fmt: skip


def spread(values: Sequence[float], agg: str = "median") -> dict[str, Any]:
    """The aggregate (`median` or `min`), min, max and count of the finite `values`."""
    ok = [v for v in values if finite(v)]
    if not ok:
        return {"value": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    value = statistics.median(ok) if agg == "median" else min(ok)
    return {"value": value, "min": min(ok), "max": max(ok), "n": len(ok)}


def _select(trials: Sequence[Trial], **keys: Any) -> list[Trial]:
    return [t for t in trials if all(t.get(k) == v for k, v in keys.items())]


def finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _ratio(a: float, b: float) -> float:
    return a / b if finite(a) and finite(b) and b else math.nan


def evaluate(goal: Goal, trials: Sequence[Trial], transport: str, policy: str) -> dict[str, Any]:
    """One target row for `transport` under GC `policy`."""
    keys = {"benchmark": goal.benchmark, "transport": transport, "gc": policy}
    ours = _select(trials, side=goal.side, **keys)
    reference = _best(goal, trials, keys) if goal.best_of else goal.reference
    refs = _select(trials, side=reference, **keys) if reference else []
    value = spread([t[goal.metric] for t in ours], goal.agg)
    ref = spread([t[goal.metric] for t in refs], goal.agg)
    by_rep = {t["rep"]: t[goal.metric] for t in refs}
    paired = [_ratio(t[goal.metric], by_rep.get(t["rep"], math.nan)) for t in ours]
    row: dict[str, Any] = {
        "target": goal.target,
        "title": goal.title,
        "benchmark": goal.benchmark,
        "transport": transport,
        "gc": policy,
        "metric": goal.metric,
        "unit": goal.unit,
        "side": goal.side,
        "reference_side": reference,
        "value": value,
        "reference": ref,
        "ratio": {**spread(paired), "value": _ratio(value["value"], ref["value"])},
        "goal": "context" if goal.target == "context" else f"{goal.on} {goal.op} {goal.limit:g}",
        "warnings": warnings(ours + refs),
        "peak_cores": {
            "value": spread([t.get("server_cores_peak_1s", math.nan) for t in ours]),
            "reference": spread([t.get("server_cores_peak_1s", math.nan) for t in refs]),
        },
    }
    if goal.explain:  # only these rows carry it: older results re-derive unchanged
        # a target met by the median may still have been missed by single repetitions
        per_rep = paired if goal.on == "ratio" else [t[goal.metric] for t in ours]
        row["reps_missed"] = sum(
            verdict(goal, {"ratio": {"value": v}, "value": {"value": v}})["met"] is False
            for v in per_rep
        )
        row["explain"] = [
            {
                "metric": m,
                "label": EXPLAIN_LABELS.get(m, m),
                "value": spread([_number(t.get(m)) for t in ours]),
                "reference": spread([_number(t.get(m)) for t in refs]),
            }
            for m in goal.explain
        ]
    return {**row, **verdict(goal, row)}


def _number(x: object) -> float:
    """A metric as a float for `spread` (a bool as 0/1, anything absent as NaN)."""
    return float(x) if isinstance(x, int | float) else math.nan


def _best(goal: Goal, trials: Sequence[Trial], keys: dict[str, Any]) -> str:
    """Of `goal.best_of`, the side with the lowest median of the metric (lower is better
    for every metric such a goal compares)."""
    medians = {
        side: spread([t[goal.metric] for t in _select(trials, side=side, **keys)])["value"]
        for side in goal.best_of
    }
    return min(goal.best_of, key=lambda side: medians[side] if finite(medians[side]) else math.inf)


def verdict(goal: Goal, row: dict[str, Any]) -> dict[str, Any]:
    """`met` (None for context rows) and by how much a missed target was missed."""
    if goal.target == "context":
        return {"met": None, "miss": ""}
    got = row["ratio"]["value"] if goal.on == "ratio" else row["value"]["value"]
    if not math.isfinite(got):
        return {"met": False, "miss": "not measured"}
    met = {"<=": got <= goal.limit, "<": got < goal.limit, ">=": got >= goal.limit}[goal.op]
    if met:
        return {"met": True, "miss": ""}
    over = got - goal.limit
    pct = 100 * abs(over) / goal.limit if goal.limit else math.inf
    unit = "x" if goal.on == "ratio" or goal.unit == "x" else f" {goal.unit}"
    word = "over" if over > 0 else "under"
    return {"met": False, "miss": f"{abs(over):.3g}{unit} {word} ({pct:.0f}%)"}


def warnings(trials: Sequence[Trial]) -> list[str]:
    """What makes these trials less trustworthy (a saturated load generator or machine, other
    processes' load, no steady window) or what went wrong (lost tokens, failed streams)."""
    out = []
    for t in trials:
        who = f"{t['side']} rep {t['rep']}"
        if t.get("client_saturated"):
            out.append(f"{who}: load generator saturated (a worker >90% CPU)")
        if t.get("machine_saturated"):
            out.append(f"{who}: machine saturated ({t['machine_busy_cores_total']:.2f} cores busy)")
        if (t.get("other_cores") or 0) > OTHER_LOAD_WARN_CORES:
            out.append(f"{who}: other processes used {t['other_cores']:.2f} cores")
        if t.get("steady_window") is False:
            out.append(f"{who}: no moment with every stream open; CPU over the whole trial")
        if t.get("tokens_lost"):
            out.append(f"{who}: {t['tokens_lost']} tokens lost")
        if t.get("stream_errors"):
            out.append(f"{who}: {t['stream_errors']} streams failed ({t['first_error'][:80]})")
    return out


def targets(trials: Sequence[Trial], profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target row the trials allow, in the issue's order; titles name the sizes the
    `profile` (a `benchmarks.suite.Profile` as a dict) measured."""
    rows = []
    for goal in GOALS:
        measured = _select(trials, benchmark=goal.benchmark)
        policies = sorted({t["gc"] for t in measured}, key=lambda p: p != "scheduled")
        for policy in policies:
            for transport in goal.transports:
                here = _select(measured, transport=transport, gc=policy)
                needed = {goal.side, goal.reference, *goal.best_of} - {""}
                if here and needed <= {t["side"] for t in here}:
                    row = evaluate(goal, trials, transport, policy)
                    rows.append({**row, "title": goal.title.format(**profile)})
    return rows


SCALE_METRICS = (
    "cpu_per_token_us", "server_cores", "server_cores_peak_1s", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "latency_count", "lateness_p50_ms",
    "lateness_p99_ms", "duration_ratio_max", "bytes_down_per_token", "client_cpu_max_fraction",
    "machine_busy_cores_total", "other_cores",
)  # fmt: skip
REDIS_METRICS = (
    "delivered_pct", "whole_cpu_per_token_us", "whole_server_cpu_per_token_us",
    "whole_redis_cpu_per_token_us", "cpu_per_token_us", "server_cpu_per_token_us",
    "redis_cpu_per_token_us", "listen_drops",
    "server_cores", "worker_cores_peak_1s_max", "worker_cores_peak_1s_min", "redis_cores",
    "redis_cores_peak_1s", "supervisor_cpu_s", "latency_p50_ms", "latency_p99_ms",
    "latency_max_ms", "lateness_p99_ms", "duration_ratio_max", "loop_lag_max_ms",
    "client_cores", "machine_busy_cores_total", "other_cores",
)  # fmt: skip
ABUSE_MEMORY = ("rss_before_bytes", "rss_peak_bytes", "rss_after_bytes", "held_bytes_peak",
                "budget_bytes", "evicted")  # fmt: skip
VICTIM_METRICS = ("victim_requests", "victim_served", "victim_refused",
                  "victim_first_token_ms_median", "victim_first_token_ms_max")  # fmt: skip
DETAIL_METRICS = {
    "raw_ceiling": ("tokens_per_s", "cpu_per_token_us", "bytes_down_per_token"),
    "throughput": ("tokens_per_s", "cpu_per_token_us", "server_cores", "reader_cpu_fraction",
                   "bytes_down_per_token"),
    "idle_memory": ("bytes_per_connection", "open_s"),
    "longpoll": ("cpu_per_request_us", "server_cores", "latency_p50_ms", "latency_p99_ms",
                 "latency_count", "window_requests", "bytes_down_per_token",
                 "client_cpu_max_fraction", "other_cores"),
    "streams1000": SCALE_METRICS,
    "streams5000": SCALE_METRICS,
    "h2_throughput": ("tokens_per_s", "client_cpu_per_token_us", "client_cores",
                      "server_cpu_per_token_us", "front_cpu_per_token_us",
                      "bytes_down_per_token", "connections", "other_cores"),
    "redis_log": REDIS_METRICS,
    "streams5000_workers": REDIS_METRICS,
    "abuse_v1": ("stream_usual_bytes_per_text_byte", "stream_ascii128_bytes_per_text_byte",
                 "stream_escaped128_bytes_per_text_byte", "whole_usual_bytes_per_text_byte",
                 "whole_ascii128_bytes_per_text_byte", "whole_escaped128_bytes_per_text_byte",
                 "model129_status"),
    "abuse_nonreader": ("connections", "status_200", "closed", "stall_to_close_s_max",
                        "closed_s_max", "queue_peak_bytes", *ABUSE_MEMORY, "quota_cancelled",
                        "control_rss_growth_bytes", "control_held_bytes_peak",
                        "write_timeouts", *VICTIM_METRICS),
    "abuse_longpoll": ("creates", "created", "quota_cancelled", "budget_cancelled",
                       *ABUSE_MEMORY, *VICTIM_METRICS),
    "abuse_fill": ("creates", "created", "fill_s", "creates_per_s", "victim_refused_during",
                   "victim_first_token_ms_max_during", *VICTIM_METRICS, *ABUSE_MEMORY),
    "webtransport": ("delivered_pct", "latency_p50_ms", "latency_p99_ms", "latency_count",
                     "steady_p50_ms", "steady_p99_ms", "steady_count",
                     "cpu_per_token_us", "server_cores", "client_process_cores",
                     "server_lag_p90_ms", "client_lag_p90_ms",
                     "duration_ratio_max",
                     "connections", "other_cores"),
    "webtransport_sweep": ("delivered_pct", "latency_p50_ms", "latency_p99_ms",
                           "latency_count", "steady_p99_ms", "steady_count",
                           "cpu_per_token_us", "server_cores", "server_sys_share",
                           "server_lag_p90_ms", "server_lag_max_ms", "client_cores",
                           "client_worker_cores_max", "client_lag_p90_ms",
                           "client_lag_max_ms", "client_worker_wall_s_max", "wall_s",
                           "duration_ratio_max", "other_cores"),
    "quic_delay": ("added_ms", "delay_error_ms", "direct_p50_ms", "delayed_p50_ms",
                   "direct_p99_ms", "delayed_p99_ms", "direct_count", "delayed_count",
                   "other_cores"),
    "abuse_slowloris": ("connections", "closed", "closed_s_min", "closed_s_max",
                        "header_timeouts", "refused_client", *ABUSE_MEMORY, *VICTIM_METRICS),
}  # fmt: skip


def details(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """Per benchmark, side, transport and policy: median [min-max] (n) of its key metrics."""
    groups = sorted({(t["benchmark"], t["transport"], t["gc"], t["side"]) for t in trials})
    out = []
    for bench, transport, policy, side in groups:
        chosen = _select(trials, benchmark=bench, transport=transport, gc=policy, side=side)
        metrics = {m: spread([t.get(m, math.nan) for t in chosen]) for m in DETAIL_METRICS[bench]}
        out.append(
            {"benchmark": bench, "transport": transport, "gc": policy, "side": side, **metrics}
        )
    return out
