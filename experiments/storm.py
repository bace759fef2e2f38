"""Experiment `storm`: a node carrying N streams dies; the survivors take every reconnect.

Three nodes behind nginx share the Redis log (netem/cluster.py, lease `lease_ms`). N clients
open their first connection straight to node0 (clients/handover.py), so it carries all N
streams, and reconnect through nginx; `kill_at_s` after the first start node0 is SIGKILLed.
Per condition (the clients' first backoff, with its equal jitter of 0.5-1x, and for SSE the
server's `retry:`), each stream's recovery (analysis/failover.py), and the spike: CPU of
each node and of Redis from /proc and loop lag from /stats (harness/sampler.py every 0.1 s),
Redis commands per second (INFO) before and after the kill. The clients run in this process:
its CPU share over the storm is in the `load` table and a saturated load generator is said
on stderr (experiments.engine.warn_if_saturated), since then the client, not the cluster,
sets the recovery tail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from analysis import failover as fo
from analysis.matrix import count_of
from clients.base import ClientOptions
from clients.fleet import raise_fd_limit, saturated
from clients.handover import Handover, run_handover
from clients.recorder import measuring, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, run_sync, warn_if_saturated
from experiments.spec import RunSpec
from harness.sampler import Sampler
from netem.cluster import Cluster, ClusterSpec
from netem.failover import Killer, choose_node, revived
from presentation import charts_failover
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "storm"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = ("sse", "websocket")
    nodes: int = 3
    streams: int = 1000  # on the node that dies
    tokens: int = 60
    rate: float = 5.0  # 1,000 x 5 tokens/s: the load generator's share stays under a core
    ttft_ms: float = 0.0
    ramp_s: float = 2.0  # the N first connections spread over this
    kill_at_s: float = 4.0  # after the first start; after the ramp
    backoffs_ms: tuple[float, ...] = (50.0, 1000.0)  # first reconnect delay, jittered 0.5-1x
    retry_ms: tuple[float, ...] = (1000.0, 100.0)  # the nodes' SSE retry:, a cluster each
    lease_ms: int = 500
    netns: bool = False  # each node in a namespace of its own (loopback: cheaper at 1,000)
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=10)
    )

    def __post_init__(self) -> None:
        if self.streams < 1 or self.nodes < 2:
            raise ParamError("storm needs streams >= 1 and nodes >= 2", param="streams")
        if not self.ramp_s < self.kill_at_s < self.tokens / self.rate:
            raise ParamError("storm: kill_at_s must fall after the ramp and before the answers "
                             "end (ramp_s < kill_at_s < tokens / rate)",
                             param="kill_at_s")  # fmt: skip
        if not self.backoffs_ms or not self.retry_ms or min(self.backoffs_ms) < 0:
            raise ParamError(
                "storm: backoffs_ms and retry_ms need values >= 0", param="backoffs_ms"
            )


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, streams=20, tokens=30, rate=10.0, ramp_s=0.2,
                               kill_at_s=1.0)  # fmt: skip


def storm(cluster: Cluster, transport: str, backoff_ms: float, spec: Spec, keys: dict[str, object]
          ) -> tuple[Tables, dict[str, object], list[dict[str, object]]]:  # fmt: skip
    """N streams on node0, node0 killed: their tables, the kill, and the samples."""
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    victim = cluster.nodes[0]
    options = dataclasses.replace(spec.options, backoff_ms=backoff_ms)
    handover = Handover(transport, cluster.target, spec.streams, first=victim.target,
                        stagger_ms=spec.ramp_s * 1e3 / spec.streams,
                        timeout_s=3 * params.duration_s() + 30)  # fmt: skip
    assert cluster.redis is not None
    samplers = {n.name: Sampler(n.target, n.pid, 0.1) for n in cluster.nodes}
    samplers["redis"] = Sampler(None, cluster.redis.pid, 0.1)
    info0 = cluster.redis.info()
    t0 = time.time_ns()
    with contextlib.ExitStack() as stack:
        for sampler in samplers.values():
            stack.enter_context(sampler)
        killer = stack.enter_context(Killer(cluster, t0 + int(spec.kill_at_s * 1e9),
                                            choose_node(victim.name)))  # fmt: skip
        with revived(cluster), measuring():
            records, load = run_sync(run_handover(handover, params, options))
    info1 = cluster.redis.info()
    warn_if_saturated(transport, [load])
    kill = killer.kill
    t_kill = kill.t_kill_ns if kill else -1
    samples = [{**keys, "transport": transport, "process": name, "t_kill_ns": t_kill, **row}
               for name, s in samplers.items() for row in s.rows]  # fmt: skip
    commands = float(info1["total_commands_processed"]) - float(info0["total_commands_processed"])
    row = {**keys, "transport": transport, "backoff_ms": backoff_ms, "t_kill_ns": t_kill,
           "node": kill.node if kill else "", "load_generator_cpu": load.cpu_fraction,
           "load_generator_saturated": bool(saturated([load])),
           "redis_commands_per_s": commands / ((time.time_ns() - t0) / 1e9),
           "redis_ops_per_s_last": float(info1.get("instantaneous_ops_per_sec", 0))}  # fmt: skip
    return to_tables(records, keys), row, samples


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    raise_fd_limit()
    cases = [
        (r, t, b)
        for i, r in enumerate(spec.retry_ms)
        for t in spec.transports
        for b in spec.backoffs_ms
        if i == 0 or t == "sse"
    ]  # retry: is SSE's alone
    parts, kills, samples = [], [], []
    with tqdm(total=len(cases), desc=NAME, unit="storm", disable=not progress) as bar:
        for retry in spec.retry_ms:
            cspec = ClusterSpec(spec.nodes, "redis", lease_ms=spec.lease_ms, netns=spec.netns,
                                fail_timeout_s=1,
                                server_args=("--retry-ms", f"{round(retry)}"))  # fmt: skip
            with Cluster(cspec) as cluster:
                for _, transport, backoff in [c for c in cases if c[0] == retry]:
                    label = f"backoff {backoff:g} ms, retry: {retry:g} ms"
                    point = Point(transport, GenParams(rate=spec.rate), condition=label,
                                  sweep=("backoff_ms", backoff))  # fmt: skip
                    keys = condition_keys(run_id, NAME, point)
                    tables, row, rows = storm(cluster, transport, backoff, spec, keys)
                    parts.append(tables)
                    kills.append({**row, "retry_ms": retry})
                    samples += rows
                    bar.update()
    tables = concat(parts)
    kill_frame = pd.DataFrame(kills)
    rec = fo.recovery(tables.tokens, kill_frame[kill_frame["t_kill_ns"] > 0])
    extra = {"kills": kill_frame, "recovery": rec, "samples": pd.DataFrame(samples),
             "load": load_table(pd.DataFrame(samples), kill_frame, rec)}  # fmt: skip
    return dataclasses.replace(tables, extra=extra)


def load_table(samples: pd.DataFrame, kills: pd.DataFrame, rec: pd.DataFrame) -> pd.DataFrame:
    """Per storm and process: CPU cores in the second before the kill and from the kill to
    the last stream's recovery, and the loop lag's peak then."""
    import pandas as pd

    rows = []
    for _, kill in kills.iterrows():
        keys = (samples["condition"] == kill["condition"]) & (
            samples["transport"] == kill["transport"])  # fmt: skip
        mine = rec[
            (rec["condition"] == kill["condition"]) & (rec["transport"] == kill["transport"])
        ]
        t, end = int(kill["t_kill_ns"]), mine["first_after_ns"].max()
        end = int(end) if end == end else t + 1_000_000_000
        before = fo.cpu_cores(samples[keys], t - 1_000_000_000, t)
        after = fo.cpu_cores(samples[keys], t, max(end, t + 300_000_000))
        merged = before.merge(after, on="process", suffixes=("_before", "_storm"))
        rows.append(merged.assign(condition=kill["condition"], transport=kill["transport"]))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def summary(run: StoredRun) -> pd.DataFrame:
    rec = run.extra["recovery"]
    by = rec.groupby(["condition", "transport"], sort=False)["kill_to_next_ms"]
    table = by.describe(percentiles=[0.5, 0.9, 0.99])[["count", "50%", "90%", "99%", "max"]]
    out = table.reset_index().merge(fo.summary(run.streams, rec)[
        ["condition", "transport", "lost", "duplicated", "reconnects"]])  # fmt: skip
    return out.merge(run.extra["kills"][["condition", "transport", "load_generator_cpu",
                                         "redis_commands_per_s"]])  # fmt: skip


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """The storm's recovery p99 (kill -> next new token) per transport, its worst condition."""
    table = summary(run)
    return {str(t): {"storm_recovery_p99_ms": float(rows["99%"].max()),
                     count_of("storm_recovery_p99_ms"): float(rows["count"].sum())}
            for t, rows in table.groupby("transport")}  # fmt: skip


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    table, load = summary(run), run.extra["load"]
    parts = [f"{r['transport']}, {r['condition']}: p50 {r['50%']:,.0f} / p99 {r['99%']:,.0f} ms"
             f" over {int(r['count'])} streams, {int(r['lost'])} lost, "
             f"{int(r['duplicated'])} duplicated" for _, r in table.iterrows()]  # fmt: skip
    peak = load.groupby("process")["cores_storm"].max().dropna()  # the dead node: none
    gen = run.extra["kills"]["load_generator_cpu"].max()
    return (
        "Recovery after the node's death (kill -> next new token): "
        + "; ".join(parts)
        + ". Peak CPU of the survivors and Redis during the storm: "
        + ", ".join(f"{p} {c:.2f} cores" for p, c in peak.items())
        + f". The load generator (this process) was up to {gen:.0%} busy"
        + (" - saturated: its queueing is in these tails." if gen > 0.9 else ".")
    )


EXPERIMENT = Experiment(
    NAME,
    "a node carrying N streams dies: recovery distribution, load on survivors and Redis",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "storm_recovery_p99_ms": (
            "ms",
            "p99 kill -> next token when a node with N streams dies (storm)",
        )
    },
    facts=facts,
    charts=(charts_failover.storm,),
    captions={"storm.png": "Recovery distribution and survivors' CPU when a loaded node dies"},
    tables=lambda run: [
        ("Storm recovery (ms, kill -> next new token)", summary(run)),
        ("Load around the kill (cores)", run.extra["load"]),
    ],
    reading=reading,
    tcp_only="nginx's upstream, the load balancer in front of the nodes",
)
