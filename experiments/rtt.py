"""Experiment `rtt`: latency and TTFT versus added round-trip time, per transport.

Question: what does distance cost each transport? A fault-proxy process between clients and
server adds half the round trip in each direction. Push transports pay it once (one way, per
token); polling pays a round trip per batch, and a new request each time.
"""

from __future__ import annotations

import dataclasses

from analysis.readings import worst_point_reading
from clients.base import ClientOptions
from experiments.descriptor import Experiment
from experiments.engine import Point, run_points
from experiments.spec import RunSpec, over_tcp
from presentation import charts_net
from records.schema import Tables
from streams.params import GenParams

NAME = "rtt"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    rtts_ms: tuple[float, ...] = (0.0, 20.0, 100.0, 300.0)
    tokens: int = 20
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    server: str | None = None
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, rtts_ms=(0.0, 100.0), tokens=8, rate=40.0, clients=1)


def net_for(rtt_ms: float) -> str:
    """Half the round trip each way; "" (no proxy at all) for 0."""
    return f"delay={rtt_ms / 2:g}ms" if rtt_ms > 0 else ""


def points(spec: Spec) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    return [
        Point(
            t,
            params,
            condition=f"rtt={rtt:g}ms",
            sweep=("rtt_ms", rtt),
            net=net_for(rtt),
            clients=spec.clients,
            options=spec.options,
        )
        for rtt in spec.rtts_ms
        for t in spec.transports
    ]


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    return run_points(
        points(spec), experiment=NAME, run_id=run_id, server=spec.server, progress=progress
    )


EXPERIMENT = Experiment(
    NAME,
    "latency and TTFT versus added round-trip time (fault proxy), per transport",
    Spec,
    quick,
    run,
    generic_charts=False,
    charts=(charts_net.latency_vs_sweep,),
    captions={"latency_vs_sweep.png": "Token latency and TTFT across the sweep"},
    reading=lambda run, facts: worst_point_reading(run),
    tcp_only="the fault proxy that adds the delay",
)
