"""Experiment `scale-out`: what a second server process buys, and what the shared log costs.

The `scale` experiment's points (a fresh server per N, a fleet of N clients over worker
processes, SSE at 10 tokens/s) for three setups of the server: one process with the
in-memory hub, one process with the Redis log, and two processes on one port
(`--workers 2`, SO_REUSEPORT) sharing the Redis log. Per point: delivery, token latency,
server CPU per token (every process summed), Redis's CPU per token (its own process), and
the load generator's CPU. Capacity per setup: the largest N with every token delivered
and p99 under the target.

On this 2-core machine the load generator, Redis and the server processes share two
cores: the reading states what the generator's own CPU leaves, measured in the same run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from analysis.derived import capacity
from clients.base import ClientOptions
from clients.fleet import FleetPool
from experiments.descriptor import Experiment
from experiments.scale import Setup, measure_point
from experiments.spec import RunSpec
from presentation import charts_net
from records.schema import Tables, concat
from streams.errors import ParamError

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "scale-out"
SETUPS = (Setup(1, "memory"), Setup(1, "redis"), Setup(2, "redis"))


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = ("sse",)
    ns: tuple[int, ...] = (1000, 2500, 5000)
    setups: tuple[Setup, ...] = SETUPS
    tokens: int = 20
    rate: float = 10.0
    ttft_ms: float = 100.0
    ramp_s: float = 1.0
    workers: int = 2  # load-generator processes
    uvloop: bool = True
    server_gc: str = "scheduled"
    target_p99_ms: float = 100.0
    options: ClientOptions = dataclasses.field(default_factory=lambda: ClientOptions(wait_s=25.0))

    def __post_init__(self) -> None:
        for setup in self.setups:
            if setup.log not in ("memory", "redis") or not 1 <= setup.processes <= 8:
                raise ParamError(f"a setup is 1-8 processes with a memory or redis log, not "
                                 f"{setup}", param="setups")  # fmt: skip
            if setup.processes > 1 and setup.log == "memory":
                raise ParamError("several processes need the redis log", param="setups")
        if not self.ns or min(self.ns) < 1:
            raise ParamError("ns must be positive stream counts", param="ns")


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, ns=(20, 100), tokens=10, rate=20.0)


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    parts, rows = [], []
    todo = [(s, t, n) for s in spec.setups for t in spec.transports for n in sorted(spec.ns)]
    with (
        FleetPool(spec.workers) as pool,
        tqdm(total=len(todo), desc=NAME, unit="point", disable=not progress) as bar,
    ):
        for setup, transport, n in todo:
            tables, row = measure_point(spec, transport, n, pool, run_id, setup, NAME)  # type: ignore[arg-type]
            parts.append(tables)
            rows.append(row)
            bar.update()
    table = pd.DataFrame(rows).assign(
        run_id=run_id, target_p99_ms=spec.target_p99_ms, cpus=os.cpu_count() or 0
    )
    return dataclasses.replace(concat(parts), extra={"scale_out": table})


def _capacity(table: pd.DataFrame) -> pd.DataFrame:
    return capacity(table, float(table["target_p99_ms"].iloc[0]), by=["transport", "setup"])


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport: the capacity of each setup, and the Redis log's CPU per token (server
    plus Redis) over the in-memory hub's, one process each, at the largest N both ran."""
    table = run.extra.get("scale_out")
    if table is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for _, r in _capacity(table).iterrows():
        first = table[table["setup"] == r["setup"]].iloc[0]
        key = f"capacity_{int(first['processes'])}p_{first['log']}_n"
        out.setdefault(str(r["transport"]), {})[key] = float(r["capacity_n"])
    for transport, rows in table.groupby("transport"):
        ratio = _log_cost_ratio(rows)
        if ratio is not None:
            out.setdefault(str(transport), {})["redis_log_cpu_ratio"] = ratio
    return out


def _log_cost_ratio(rows: pd.DataFrame) -> float | None:
    one = rows[rows["processes"] == 1]
    memory, redis = one[one["log"] == "memory"], one[one["log"] == "redis"]
    common = sorted(set(memory["n"]) & set(redis["n"]))
    if not common:
        return None
    n = common[-1]
    m = memory[memory["n"] == n].iloc[0]
    r = redis[redis["n"] == n].iloc[0]
    with_redis = float(r["server_cpu_per_token_us"]) + float(r["redis_cpu_per_token_us"])
    return with_redis / float(m["server_cpu_per_token_us"])


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    """Capacity per setup, what the log costs per token, and what the generator left."""
    table = run.extra["scale_out"]
    target = float(table["target_p99_ms"].iloc[0])
    parts = []
    for transport, rows in table.groupby("transport"):
        cap = _capacity(rows).set_index("setup")
        said = "; ".join(
            f"{setup}: {int(r['capacity_n'])}"
            + (" (every N tried)" if r["capacity_n"] >= r["largest_n_tried"] else "")
            for setup, r in cap.iterrows()
        )
        parts.append(f"{transport}, largest N with every token and p99 < {target:g} ms: {said}.")
        ratio = _log_cost_ratio(rows)
        if ratio is not None:
            parts.append(
                f"At one process the Redis log costs {ratio:.2f}x the in-memory hub's CPU per "
                "token (server plus Redis, same N)."
            )
        top = rows[rows["n"] == rows["n"].max()]
        gen = float(top["fleet_cpu_max_fraction"].max())
        busy = top.assign(cores=top["server_cpu_s"] / top["wall_s"])
        parts.append(
            f"At N={int(top['n'].iloc[0])} the busiest load-generator process used {gen:.0%} of a "
            f"core (saturated in {int((top['fleet_saturated'] > 0).sum())} of {len(top)} setups) "
            f"and the server processes {float(busy['cores'].max()):.2f} cores at most, on a "
            f"{int(table['cpus'].iloc[0])}-core machine shared by all of them."
        )
    return " ".join(parts)


SUMMARY_COLUMNS = ("setup", "transport", "n", "delivered_ratio", "errors", "latency_p50_ms",
                   "latency_p99_ms", "server_cpu_per_token_us", "redis_cpu_per_token_us",
                   "loop_lag_max_ms", "fleet_cpu_max_fraction", "fleet_saturated")  # fmt: skip


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    if "scale_out" not in run.extra:
        return []
    df = run.extra["scale_out"]
    target = float(df["target_p99_ms"].iloc[0])
    return [
        ("Scale-out: per setup and N", df[[c for c in SUMMARY_COLUMNS if c in df]]),
        (f"Capacity per setup: every token and p99 < {target:g} ms", _capacity(df)),
    ]


EXPERIMENT = Experiment(
    NAME,
    "1 vs 2 server processes on a shared Redis log: capacity at the p99 target, CPU per token",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "capacity_1p_memory_n": ("streams", "capacity of one process, in-memory hub"),
        "capacity_1p_redis_n": ("streams", "capacity of one process, Redis log"),
        "capacity_2p_redis_n": ("streams", "capacity of two processes, Redis log"),
        "redis_log_cpu_ratio": (
            "x",
            "CPU per token with the Redis log (server + Redis) over the in-memory hub's",
        ),
    },
    facts=facts,
    charts=(charts_net.scale_out,),
    captions={"scale_out.png": "Latency and CPU per token against streams, per server setup"},
    tables=tables,
    reading=reading,
    tcp_only="nginx's upstream in front of the processes",
)
