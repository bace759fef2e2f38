"""Experiment `reconnect`: the connection is cut every K tokens; who recovers, and at what cost?

A fault-proxy process resets (or closes) every connection `cut_every_tokens / rate` seconds
after it opened, so a stream of many tokens sees repeated cuts. Each client reconnects its
own way (SSE with Last-Event-ID, WebSocket with a resume message, polling with its cursor,
NDJSON with stream & after, one-shot by asking again) and the tables say, per stream:
reconnects, longest time without a token, recovery time, tokens lost, duplicated.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.derived import reconnect_summary
from analysis.readings import extremes
from clients.base import ClientOptions
from experiments.descriptor import Experiment
from experiments.engine import Point, run_points
from experiments.spec import RunSpec
from presentation import charts_net
from records.schema import Tables
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "reconnect"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    cut_every_tokens: tuple[int, ...] = (10,)
    cut_mode: str = "rst"  # rst: a network failure; fin: an orderly close by a middlebox
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    server: str | None = None
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=5, backoff_ms=50.0)
    )


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=30, rate=40.0, clients=1)


def points(spec: Spec) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    out = []
    for k in spec.cut_every_tokens:
        period_s = k / spec.rate  # every connection lives this long: about k tokens' worth
        net = f"cut_after={period_s:g}s,cut_mode={spec.cut_mode}"
        out += [
            Point(
                t,
                params,
                condition=f"cut every {period_s:g}s (~{k} tokens, {spec.cut_mode})",
                sweep=("cut_every_tokens", k),
                net=net,
                clients=spec.clients,
                options=spec.options,
            )
            for t in spec.transports
        ]
    return out


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    # no warm-up: a warm-up stream would itself be cut and only cost time
    return run_points(
        points(spec),
        experiment=NAME,
        run_id=run_id,
        server=spec.server,
        warmup=False,
        progress=progress,
    )


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    out = {}
    for transport, rows in run.streams.groupby("transport"):
        out[str(transport)] = {
            "cut_completed": float((rows["error"] == "").mean()),
            "cut_lost": float(rows["lost"].sum()),
            "cut_recovery_ms": float(rows["recovery_max_ms"].max()),
        }
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    ok = f[(f["cut_completed"] >= 1) & (f["cut_lost"] == 0)].index.tolist()
    _, _, slow, slow_v = extremes(f["cut_recovery_ms"])
    return (
        f"Completed every stream through the cuts with no token lost: {', '.join(ok) or 'none'}. "
        f"The slowest recovery was {slow_v:.0f} ms ({slow})."
    )


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [("Reconnect summary", reconnect_summary(run.streams))]


EXPERIMENT = Experiment(
    NAME,
    "connections cut every K tokens: recovery time, lost and duplicated tokens",
    Spec,
    quick,
    run,
    figures={
        "cut_completed": ("frac", "streams completed while cut every ~10 tokens (reconnect)"),
        "cut_lost": ("tokens", "tokens lost across those cuts, all streams"),
        "cut_recovery_ms": ("ms", "longest recovery: cut -> next new token"),
    },
    facts=facts,
    charts=(charts_net.reconnect,),
    captions={"reconnect.png": "Recovery from repeated connection cuts"},
    tables=tables,
    reading=reading,
)
