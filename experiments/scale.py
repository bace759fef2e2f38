"""Experiment `scale`: how many concurrent answers can one server stream, at what cost?

For each transport and each N, a fresh server (uvloop, `--gc scheduled`) and a fleet of N
clients spread over worker processes (starts staggered over `ramp_s`) stream `tokens`
tokens at `rate` tokens/s each. Measured per point: delivery ratio, token latency
percentiles, server CPU per token (from /proc, over the run), server memory per connection
(peak RSS minus the idle server's, over N), event-loop lag, and the load generator's own CPU
(a saturated generator is flagged: then the numbers describe the harness). Capacity at a
target: the largest N whose every token arrived with p99 under `target_p99_ms`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from analysis.derived import capacity
from clients.base import ClientOptions
from clients.fleet import FleetPool, saturated
from clients.recorder import measuring, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, warmed_fleet
from experiments.spec import RunSpec
from harness import procstat
from harness.children import ServerProcess
from harness.sampler import Sampler, read_stats
from netem.redis import RedisServer
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams
from transports.registry import keys_where
from transports.web.config import ServerConfig

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "scale"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    # the wires that stream an answer as it is made over held connections (not short polls,
    # not one-shot; a variant such as openai is another wire's framing), over TCP: QUIC's
    # scale is benchmarks/webtransport.py's (100 sessions against WebSocket in one run)
    transports: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: keys_where(
            lambda t: t.holds and t.incremental and not t.variant_of and t.stack == "tcp")
    )
    ns: tuple[int, ...] = (10, 100, 1000, 2500, 5000)
    max_n: int | None = None  # also try this larger N (a flag goes further)
    tokens: int = 20
    rate: float = 10.0
    ttft_ms: float = 100.0
    ramp_s: float = 1.0  # client starts spread over this long
    workers: int = 2  # load-generator processes
    uvloop: bool = True
    server_gc: str = "scheduled"
    target_p99_ms: float = 100.0
    options: ClientOptions = dataclasses.field(default_factory=lambda: ClientOptions(wait_s=25.0))


def quick(spec: Spec) -> Spec:
    """Two wires up to 1000 streams: the size the "thousands of idle subscribers" verdict
    needs (capacity >= 1000). The streams keep the full size's length (20 tokens at 10/s,
    about 2 s) so that, started over `ramp_s` = 1 s, all 1000 are open at once."""
    return dataclasses.replace(spec, transports=spec.transports[:2], ns=(100, 1000))


def _ns(spec: Spec) -> list[int]:
    return sorted({*spec.ns, *([spec.max_n] if spec.max_n else [])})


@dataclasses.dataclass(frozen=True)
class Setup:
    """How the server runs: `processes` on one port, streams in the `log` ("memory": each
    process its own; "redis": one Redis shared by all, started for the point)."""

    processes: int = 1
    log: str = "memory"

    @property
    def label(self) -> str:
        return f"{self.processes} process{'es' if self.processes > 1 else ''}, {self.log} log"


def measure_point(
    spec: Spec, transport: str, n: int, pool: FleetPool, run_id: str, setup: Setup = Setup(),
    experiment: str = NAME,
) -> tuple[Tables, dict[str, object]]:  # fmt: skip
    """One fresh server (and Redis, for a shared log), one fleet of n clients; the tables and
    the point's server row. CPU is summed over every server process (and Redis's is its
    own column); tokens per CPU second use what the hub emitted with one process, and what
    the clients received with several (one port cannot address each process's /stats)."""
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        redis = None
        if setup.log == "redis":
            redis = stack.enter_context(RedisServer())
            args += ["--log", redis.url]
        if setup.processes > 1:
            args += ["--workers", str(setup.processes)]
        server = ServerProcess(args, config=ServerConfig(gc=spec.server_gc, uvloop=spec.uvloop))
        target = server.start()
        stack.callback(server.stop)
        pids = [int(p) for p in server.ready_fields.get("pids", "").split(",") if p]
        pids = pids or [server.pid]
        fleet = warmed_fleet(pool, target, transport, n, spec.ramp_s, spec.uvloop, spec.options)
        base = [procstat.sample(pid) for pid in pids]
        redis0 = redis.cpu_s() if redis is not None else 0.0
        stats0 = read_stats(target)
        started = time.monotonic()
        with Sampler(target, pids[0], interval_s=0.25) as sampler, measuring():
            records, workers = pool.run(fleet, target, params, spec.options)
        wall_s = time.monotonic() - started
        after = [procstat.sample(pid) for pid in pids]
        redis_cpu_s = redis.cpu_s() - redis0 if redis is not None else 0.0
        lags = [read_stats(target) for _ in range(4 * len(pids) - 3)]  # each process, likely
    condition = f"n={n}" if setup == Setup() else f"{setup.label}, n={n}"
    point = Point(transport, params, condition=condition, sweep=("clients", n), clients=n)
    tables = to_tables(records, condition_keys(run_id, experiment, point))
    if len(pids) == 1:
        tokens_sent = lags[0]["hub"]["tokens_emitted"] - stats0["hub"]["tokens_emitted"]
    else:
        tokens_sent = int(tables.streams["tokens_received"].sum())
    cpu_s = sum(a.cpu_s - b.cpu_s for a, b in zip(after, base, strict=True))
    if len(pids) == 1:
        peak_rss = max([r["rss_bytes"] for r in sampler.rows] + [after[0].rss_bytes])
    else:  # the processes' RSS at the end (no per-process sampler behind one port)
        peak_rss = sum(a.rss_bytes for a in after)
    base_rss = sum(b.rss_bytes for b in base)
    lat = tables.tokens["latency_ms"]
    e2e_ratio = tables.streams["e2e_ms"] / (params.duration_s() * 1e3)
    row = {
        "transport": transport,
        "n": n,
        "tokens_expected": n * spec.tokens,
        "tokens_delivered": int(tables.streams["tokens_received"].sum()),
        "delivered_ratio": float(tables.streams["tokens_received"].sum()) / (n * spec.tokens),
        "errors": int((tables.streams["error"] != "").sum()),
        "latency_p50_ms": float(lat.quantile(0.5)),
        "latency_p99_ms": float(lat.quantile(0.99)),
        "latency_max_ms": float(lat.max()),
        # per stream: request sent -> end seen, over the ideal ttft + tokens / rate
        "e2e_ratio_p50": float(e2e_ratio.quantile(0.5)),
        "e2e_ratio_max": float(e2e_ratio.max()),
        "wall_s": wall_s,
        "server_cpu_s": cpu_s,
        "server_cpu_per_token_us": cpu_s / tokens_sent * 1e6 if tokens_sent else float("nan"),
        "server_rss_per_conn_bytes": (peak_rss - base_rss) / n,
        "loop_lag_max_ms": max(float(s["loop_lag_ms"]["max_ms"]) for s in lags),
        "gc_collections": str(lags[0].get("gc", {}).get("collections")),
        "setup": setup.label,
        "processes": setup.processes,
        "log": setup.log,
        "redis_cpu_s": redis_cpu_s,
        "redis_cpu_per_token_us": redis_cpu_s / tokens_sent * 1e6 if tokens_sent else 0.0,
        "fleet_cpu_max_fraction": max(w.cpu_fraction for w in workers),
        "fleet_saturated": len(saturated(workers)),
        "server_gc": spec.server_gc,
        "uvloop": spec.uvloop,
    }
    return tables, row


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    parts, rows = [], []
    todo = [(t, n) for t in spec.transports for n in _ns(spec)]
    with (
        FleetPool(spec.workers) as pool,
        tqdm(total=len(todo), desc=NAME, unit="point", disable=not progress) as bar,
    ):
        for transport, n in todo:
            tables, row = measure_point(spec, transport, n, pool, run_id)
            parts.append(tables)
            rows.append(row)
            if row["fleet_saturated"]:
                bar.write(f"warning: load generator saturated at {transport} n={n}")
            bar.update()
    tables = concat(parts)
    scale = pd.DataFrame(rows).assign(run_id=run_id, target_p99_ms=spec.target_p99_ms)
    return dataclasses.replace(tables, extra={"scale": scale})


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Capacity at the p99 target and the largest N tried: a capacity equal to it means the
    target was never missed, so the real capacity is at least that (the matrix says so)."""
    table = run.extra.get("scale")
    if table is None:
        return {}
    cap = capacity(table, float(table["target_p99_ms"].iloc[0]))
    return {
        str(r["transport"]): {
            "capacity_n": float(r["capacity_n"]),
            "capacity_tried_n": float(r["largest_n_tried"]),
        }
        for _, r in cap.iterrows()
    }


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    """Capacity per transport; where the target was missed, what the server's figures at
    the first N that missed it show (CPU, loop lag), stated only as far as they go."""
    table = run.extra["scale"]
    target = float(table["target_p99_ms"].iloc[0])
    cap = capacity(table, target).set_index("transport")
    open_ended = cap[cap["capacity_n"] >= cap["largest_n_tried"]]
    limited = cap[cap["capacity_n"] < cap["largest_n_tried"]]
    parts = []
    if not open_ended.empty:
        parts.append(
            f"Met the p99 < {target:g} ms target at every N tried, so capacity is at least "
            + ", ".join(f"{int(r.largest_n_tried)} ({t})" for t, r in open_ended.iterrows())
            + "."
        )
    for transport, r in limited.iterrows():
        rows = table[(table["transport"] == transport) & (table["n"] > r["capacity_n"])]
        first = rows.sort_values("n").iloc[0]
        cpu = float(first["server_cpu_s"]) / max(1e-9, float(first["wall_s"]))
        lag = float(first["loop_lag_max_ms"])
        why = (
            "the server process was CPU-bound and its loop fell behind"
            if cpu >= 0.9 or lag >= target / 2
            else "the server's own figures do not show saturation (see the client side)"
        )
        parts.append(
            f"{transport}: capacity {int(r['capacity_n'])} streams; at {int(first['n'])}, p99 "
            f"{float(first['latency_p99_ms']):.0f} ms, delivered "
            f"{float(first['delivered_ratio']):.0%}, server CPU {cpu:.0%} of a core, loop lag "
            f"{lag:.0f} ms: {why}."
        )
    return " ".join(parts)


SUMMARY_COLUMNS = ("transport", "n", "delivered_ratio", "errors", "latency_p50_ms",
                   "latency_p99_ms", "latency_max_ms", "e2e_ratio_max", "server_cpu_per_token_us",
                   "server_rss_per_conn_bytes", "loop_lag_max_ms", "fleet_cpu_max_fraction",
                   "fleet_saturated")  # fmt: skip


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    if "scale" not in run.extra:
        return []
    df = run.extra["scale"]
    target = float(df["target_p99_ms"].iloc[0])
    return [
        ("Scale: per transport and N", df[[c for c in SUMMARY_COLUMNS if c in df]]),
        (
            f"Capacity: largest N with every token delivered and p99 < {target:g} ms",
            capacity(df, target),
        ),
    ]


EXPERIMENT = Experiment(
    NAME,
    "concurrent streams 10..5000 per transport: delivery, p99, CPU/token, memory/conn",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "capacity_n": ("streams", "largest N with every token and p99 under target (scale)"),
        "capacity_tried_n": ("streams", "largest N the scale run tried"),
    },
    facts=facts,
    charts=(charts_net.scale,),
    captions={"scale.png": "Latency, CPU and memory against concurrent streams"},
    tables=tables,
    reading=reading,
)
