"""Experiment `idle`: what does one idle connection cost the server in memory?

For each transport and N, a fresh server; N clients each start a stream whose first token is
due only after `hold_s` (a long prefill), so every connection is open and idle (SSE and
NDJSON responses begun, WebSocket upgraded, long polls and one-shot requests held). Once the
server reports all N waiting, its RSS minus its RSS before (after a warm-up) over N is the
memory per idle connection.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING

from analysis.matrix import count_of
from analysis.readings import extremes
from clients.base import ClientOptions
from clients.fleet import FleetPool
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, warmed_fleet
from experiments.spec import RunSpec
from harness import procstat
from harness.children import ServerProcess
from harness.sampler import Sampler
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams
from transports.registry import keys_where
from transports.web.config import ServerConfig

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "idle"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    # every wire that holds a connection open while idle (short polls do not; a variant such
    # as openai is another wire's framing)
    transports: tuple[str, ...] = dataclasses.field(
        # QUIC's idle cost is another question (a user-space connection, no kernel socket
        # per client): not measured here yet
        default_factory=lambda: keys_where(
            lambda t: t.holds and not t.variant_of and t.stack == "tcp")
    )
    ns: tuple[int, ...] = (1000,)
    hold_s: float = 6.0  # the prefill: how long every connection sits idle
    ramp_s: float = 1.0
    workers: int = 2
    uvloop: bool = True
    server_gc: str = "scheduled"
    options: ClientOptions = dataclasses.field(default_factory=lambda: ClientOptions(wait_s=30.0))


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, transports=spec.transports[:2], ns=(200,), hold_s=3.0)


def measure_point(
    spec: Spec, transport: str, n: int, pool: FleetPool, run_id: str
) -> tuple[Tables, dict[str, object]]:
    params = GenParams(tokens=1, rate=1.0, ttft_ms=spec.hold_s * 1e3)
    server = ServerProcess(
        config=ServerConfig(gc=spec.server_gc, heartbeat_s=0.0, uvloop=spec.uvloop)
    )
    target = server.start()
    result: list[list[StreamRecord]] = []
    try:
        fleet = warmed_fleet(pool, target, transport, n, spec.ramp_s, spec.uvloop, spec.options)
        time.sleep(0.2)
        base = procstat.sample(server.pid)
        runner = threading.Thread(
            target=lambda: result.append(pool.run(fleet, target, params, spec.options)[0])
        )
        with Sampler(target, server.pid) as sampler:
            runner.start()
            row = sampler.wait_until(
                lambda r: r["open"].get(transport, 0) >= n, timeout_s=spec.ramp_s + spec.hold_s
            )
            time.sleep(0.3)  # let the last connections settle
            held = procstat.sample(server.pid)
            waiting = sampler.sample()["open"].get(transport, 0)
            runner.join(timeout=spec.hold_s + 60)
    finally:
        server.stop()
    point = Point(transport, params, condition=f"idle n={n}", sweep=("clients", n), clients=n)
    tables = to_tables(result[0] if result else [], condition_keys(run_id, NAME, point))
    return tables, {
        "transport": transport,
        "n": n,
        "connections_waiting": int(waiting),
        "all_waiting": bool(row["open"].get(transport, 0) >= n),
        "rss_base_bytes": base.rss_bytes,
        "rss_held_bytes": held.rss_bytes,
        "rss_per_conn_bytes": (held.rss_bytes - base.rss_bytes) / max(1, waiting),
        "server_gc": spec.server_gc,
        "uvloop": spec.uvloop,
    }


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    parts, rows = [], []
    todo = [(t, n) for t in spec.transports for n in spec.ns]
    with (
        FleetPool(spec.workers) as pool,
        tqdm(total=len(todo), desc=NAME, unit="point", disable=not progress) as bar,
    ):
        for transport, n in todo:
            tables, row = measure_point(spec, transport, n, pool, run_id)
            parts.append(tables)
            rows.append(row)
            bar.update()
    return dataclasses.replace(
        concat(parts), extra={"idle": pd.DataFrame(rows).assign(run_id=run_id)}
    )


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("idle")
    if table is None:
        return {}
    largest = table[table["n"] == table.groupby("transport")["n"].transform("max")]
    return {
        str(r["transport"]): {
            "idle_conn_kib": float(r["rss_per_conn_bytes"]) / 1024,
            count_of("idle_conn_kib"): float(r["connections_waiting"]),
        }
        for _, r in largest.iterrows()
    }


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    lo, lo_v, hi, hi_v = extremes(f["idle_conn_kib"])
    return (
        f"Server memory per idle connection ranged from {lo_v:.1f} KiB ({lo}) to "
        f"{hi_v:.1f} KiB ({hi}). Measured as RSS growth over the connections held."
    )


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    if "idle" not in run.extra:
        return []
    return [("Idle connections: server memory", run.extra["idle"].drop(columns=["run_id"]))]


EXPERIMENT = Experiment(
    NAME,
    "server memory per idle connection, per transport",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={"idle_conn_kib": ("KiB", "server memory per idle connection (idle)")},
    facts=facts,
    charts=(charts_net.idle,),
    captions={"idle.png": "Server memory per idle connection"},
    tables=tables,
    reading=reading,
)
