"""Experiment `failover`: a client's node is SIGKILLed mid-answer; what does the client lose?

Two nodes behind nginx (netem/cluster.py), each a host of its own in a network namespace
(`netns`, the default; on loopback with `--set netns=false`), per transport one client per
trial, and at `kill_after_tokens` into the answer one node dies (netem/failover.py picks it
by looking):

- `serving`: the node holding the client's connection (`/stats` open connections; a poller
  between two polls: its stream's generator). For a streaming transport that node also
  generates the stream (its request started it there): the `kills` table's `served` and
  `owned` say so per trial rather than claim two cases.
- `owner` (Redis log only): the stream is started on node A straight, the client reads it
  through node B, and A dies: the generator dies while the client's node survives.

Conditions: each node its own in-memory hub (`log=memory`, the baseline: a resume on a
survivor finds no stream, 404) against the shared Redis log (`log=redis`, lease
`lease_ms`: a survivor takes the stream over once the dead node's lease lapses, so the
recovery is bounded by the lease plus half a lease's sweep, streams/redislog.py); nginx
round robin, and, for `sticky_transports`, hashing by stream id. The recovery
(analysis/failover.py) runs from the last token before the kill to the next new one, on the
client's clock; the transport's own retry delay is its own column.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from analysis import failover as fo
from analysis.matrix import FIXED, count_of
from clients.base import ClientOptions
from clients.handover import Handover, run_handover
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, run_sync
from experiments.spec import RunSpec, over_tcp
from netem.cluster import LOGS, Cluster, ClusterSpec
from netem.failover import (
    Kill,
    Killer,
    choose_node,
    choose_serving,
    create_stream,
    node_stats,
    revived,
)
from presentation import charts_failover
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams
from transports.registry import keys_where

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "failover"
MODES = ("serving", "owner")


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    # nginx balances TCP; a QUIC session would go straight to one node (no UDP balancer here)
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    nodes: int = 2
    logs: tuple[str, ...] = LOGS
    modes: tuple[str, ...] = MODES
    # the wires whose deployments use sticky routing: a stream of polls, or an upgraded
    # connection the load balancer pins anyway (from the registry, not by name)
    sticky_transports: tuple[str, ...] = dataclasses.field(default_factory=lambda: keys_where(
        lambda t: t.requests_per_answer == "many" or t.connection == "upgraded"))  # fmt: skip
    tokens: int = 80
    rate: float = 20.0
    ttft_ms: float = 100.0
    kill_after_tokens: int = 20
    repeats: int = 5  # trials (one client each) per condition and transport
    lease_ms: int = 500
    retry_ms: float = 1000.0  # the nodes' SSE retry: (pushlab's default)
    netns: bool = True  # each node a host of its own in a network namespace (needs root)
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=10, backoff_ms=50.0)
    )

    def __post_init__(self) -> None:
        bad = [x for x in self.logs if x not in LOGS] + [m for m in self.modes if m not in MODES]
        if bad or not self.logs or not self.modes:
            raise ParamError(f"failover: logs are {', '.join(LOGS)} and modes "
                             f"{', '.join(MODES)}, got {bad or 'none'}", param="logs")  # fmt: skip
        if not 1 <= self.kill_after_tokens < self.tokens:
            raise ParamError("kill_after_tokens must be 1..tokens-1", param="kill_after_tokens")
        if self.repeats < 1 or self.nodes < 2 or self.lease_ms < 1:
            raise ParamError("failover needs repeats >= 1, nodes >= 2, lease_ms >= 1",
                             param="repeats")  # fmt: skip


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=30, rate=40.0, ttft_ms=0.0, kill_after_tokens=8,
                               repeats=1)  # fmt: skip


def retry_delay_ms(spec: Spec, transport: str) -> float:
    """The wait the transport itself puts before a reconnect, whatever the log does."""
    if transport == "sse":
        return max(spec.retry_ms, spec.options.backoff_ms)
    return spec.options.interval_ms if transport == "shortpoll" else spec.options.backoff_ms


def trials(spec: Spec, log: str, sticky: bool) -> list[tuple[str, str]]:
    """(transport, mode) pairs of one cluster: `owner` needs the shared log and a resumable
    transport; sticky routing only for the transports it is asked for."""
    resumable = keys_where(lambda t: t.resumable and t.incremental)
    out = []
    for mode in spec.modes:
        for t in spec.transports:
            if sticky and t not in spec.sticky_transports:
                continue
            if mode == "owner" and (log != "redis" or t not in resumable or sticky):
                continue
            out.append((t, mode))
    return out


def trial(
    cluster: Cluster, transport: str, mode: str, spec: Spec
) -> tuple[list[StreamRecord], Kill | None]:
    """One client of `transport` through the cluster, one node killed mid-answer."""
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    kill_in_ns = int((spec.ttft_ms + spec.kill_after_tokens * 1e3 / spec.rate) * 1e6)
    timeout_s = 3 * params.duration_s() + 15
    if mode == "owner":  # generated by node A, read through node B
        a, b = cluster.nodes[0], cluster.nodes[1]
        stream = create_stream(a, params)
        t0 = time.time_ns()
        handover = Handover(transport, cluster.target, first=b.target, streams=(stream,),
                            timeout_s=timeout_s)  # fmt: skip
        chooser = choose_node(a.name)
    else:
        stream, t0 = "", time.time_ns()
        handover = Handover(transport, cluster.target, timeout_s=timeout_s)
        chooser = choose_serving(transport)
    with revived(cluster), Killer(cluster, t0 + kill_in_ns, chooser, transport, stream) as k:
        records, _ = run_sync(run_handover(handover, params, spec.options))
    return records, k.kill


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    clusters = [(log, sticky) for log in spec.logs for sticky in (False, True)
                if not sticky or set(spec.sticky_transports) & set(spec.transports)]  # fmt: skip
    parts, kills, logs = [], [], []
    total = sum(len(trials(spec, log, s)) for log, s in clusters) * spec.repeats
    with tqdm(total=total, desc=NAME, unit="trial", disable=not progress) as bar:
        for index, (log, sticky) in enumerate(clusters):
            cspec = ClusterSpec(spec.nodes, log, sticky, netns=spec.netns, fail_timeout_s=1,
                                server_args=("--retry-ms", f"{round(spec.retry_ms)}"),
                                lease_ms=spec.lease_ms if log == "redis" else None)  # fmt: skip
            with Cluster(cspec) as cluster:
                for transport, mode in trials(spec, log, sticky):
                    routing = "sticky" if sticky else "round robin"
                    condition = f"log={log}, {routing}, kill {mode} node"
                    point = Point(transport, GenParams(rate=spec.rate), condition=condition,
                                  sweep=("cluster", float(index)))  # fmt: skip
                    keys = condition_keys(run_id, NAME, point)
                    for _ in range(spec.repeats):
                        records, kill = trial(cluster, transport, mode, spec)
                        parts.append(to_tables(records, keys))
                        kills.append({**keys, "transport": transport, "log": log,
                                      # the trial's one stream: its kill is this one
                                      "stream_id": parts[-1].streams["stream_id"].iloc[0],
                                      "routing": routing, "mode": mode,
                                      "lease_ms": spec.lease_ms if log == "redis" else None,
                                      "retry_delay_ms": retry_delay_ms(spec, transport),
                                      **(kill.row() if kill else {"t_kill_ns": -1})})  # fmt: skip
                        bar.update()
                for name, stats in ((n.name, node_stats(n)) for n in cluster.nodes):
                    logs.append({"condition_log": log, "routing": routing, "node": name,
                                 **{k: v for k, v in stats.get("log", {}).items()
                                    if isinstance(v, int | float)}})  # fmt: skip
    tables = concat(parts)
    kill_frame = pd.DataFrame(kills)
    per_stream = fo.recovery(tables.tokens, kill_frame[kill_frame["t_kill_ns"] > 0])
    extra = {"kills": kill_frame, "recovery": per_stream, "log_stats": pd.DataFrame(logs)}
    return dataclasses.replace(tables, extra=extra)


def summary(run: StoredRun) -> pd.DataFrame:
    return fo.condition_table(run.streams, run.extra["kills"], run.extra["recovery"])


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport, killing the serving node: lost, duplicated, recovery p99 and the retry
    delay with each node's in-memory hub (the default) and (`@fixed`) with the Redis log;
    sticky routing's lost + duplicated beside them."""
    table = summary(run)
    out: dict[str, dict[str, float]] = {}
    for log, suffix in (("memory", ""), ("redis", FIXED)):
        for routing, prefix in (("round robin", "failover"), ("sticky", "failover_sticky")):
            rows = table[(table["log"] == log) & (table["routing"] == routing)
                         & (table["mode"] == "serving")]  # fmt: skip
            for _, r in rows.iterrows():
                entry = out.setdefault(str(r["transport"]), {})
                harm = float(r["lost"] + r["duplicated"]) + float(r["completed"] < 1)
                entry[f"{prefix}_harm{suffix}"] = harm
                entry[count_of(f"{prefix}_harm{suffix}")] = float(r["streams"])
                if prefix == "failover":
                    entry[f"failover_lost{suffix}"] = float(r["lost"])
                    # a whole answer (oneshot) has no token before the kill: from the kill
                    recovered = r["recovery_p99_ms"]
                    recovered = recovered if recovered == recovered else r["kill_to_next_p99_ms"]
                    entry[f"failover_recovery_ms{suffix}"] = float(recovered)
                    entry[count_of(f"failover_recovery_ms{suffix}")] = float(r["streams"])
                    entry["failover_retry_ms"] = float(r["retry_delay_ms"])
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    table = summary(run)
    lines = []
    for (log, routing, mode), rows in table.groupby(["log", "routing", "mode"], sort=False):
        clean, harmed = fo.survivors_text(rows)
        worst = rows["recovery_p99_ms"].max()
        lines.append(
            f"log={log}, {routing}, killing the {mode} node: 0 lost and 0 duplicated "
            f"for {', '.join(clean) or 'none'}"
            + (
                f"; not for {', '.join(harmed)} ({int(rows['lost'].sum())} tokens lost)"
                if harmed
                else ""
            )
            + (f"; longest recovery p99 {worst:,.0f} ms." if worst == worst else ".")
        )
    lease = run.meta.get("spec", {}).get("lease_ms")
    return " ".join(lines) + f" Lease {lease} ms; recoveries include each transport's retry delay."


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [("Failover per condition and transport", summary(run))]


EXPERIMENT = Experiment(
    NAME,
    "a node dies mid-answer: tokens lost, duplicated, recovery, in-memory hub vs Redis log",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "failover_harm": (
            "tokens",
            "lost + duplicated (+1 per failed stream), serving node killed, round robin (failover)",
        ),
        "failover_lost": ("tokens", "tokens lost when the serving node died"),
        "failover_recovery_ms": ("ms", "recovery p99: last token before the kill -> next new"),
        "failover_retry_ms": ("ms", "the transport's own retry delay (SSE retry:, backoff)"),
        "failover_sticky_harm": ("tokens", "lost + duplicated with sticky routing"),
    },
    facts=facts,
    charts=(charts_failover.failover,),
    captions={"failover.png": "Recovery and tokens lost when a node dies"},
    tables=tables,
    reading=reading,
    tcp_only="nginx's upstream, the load balancer in front of the nodes",
)
