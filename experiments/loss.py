"""Experiment `loss`: token latency tails versus real packet loss, per transport.

The server runs inside a network namespace of our own, reached over a veth pair; nftables in
the namespace drops that share of TCP packets at random in both directions, so the kernel's
own retransmission and head-of-line blocking decide what the clients see. Where the machine
cannot create namespaces or random drop, the run stops with the reason (never a silent skip).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.matrix import count_of
from analysis.readings import worst_point_reading
from clients.base import ClientOptions, Target
from clients.recorder import to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, measure_records, run_sync
from experiments.spec import RunSpec
from harness.children import ServerProcess
from netem.netns import LinkSpec, NetnsLink
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:

    from records.store import StoredRun

NAME = "loss"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    losses_pct: tuple[float, ...] = (0.0, 1.0, 5.0, 10.0)
    tokens: int = 40
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=10, interval_ms=100.0)
    )


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, losses_pct=(0.0, 10.0), tokens=20, rate=40.0, clients=1)


def points(spec: Spec) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    return [
        Point(
            t,
            params,
            condition=f"loss={loss:g}%",
            sweep=("loss_pct", loss),
            clients=spec.clients,
            options=spec.options,
        )
        for loss in spec.losses_pct
        for t in spec.transports
    ]


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    from tqdm import tqdm

    todo = points(spec)
    parts = []
    with (
        NetnsLink(LinkSpec(loss_pct=0.0)) as link,
        tqdm(total=len(todo), desc=NAME, unit="point", disable=not progress) as bar,
    ):
        server = ServerProcess(host=link.server_host, prefix=["ip", "netns", "exec", link.name])
        target: Target = server.start()
        try:
            for point in todo:
                assert point.sweep is not None
                link.set_loss(point.sweep[1])
                records = run_sync(measure_records(point, target))
                parts.append(to_tables(records, condition_keys(run_id, NAME, point)))
                bar.update()
        finally:
            server.stop()
    return concat(parts)


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    worst = run.tokens[run.tokens["sweep_value"] == run.tokens["sweep_value"].max()]
    return {
        str(t): {
            "loss_p99_ms": float(r["latency_ms"].quantile(0.99)),
            count_of("loss_p99_ms"): float(r["latency_ms"].notna().sum()),
        }
        for t, r in worst.groupby("transport")
    }


EXPERIMENT = Experiment(
    NAME,
    "token latency tails versus real packet loss (network namespace, nftables)",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "loss_p99_ms": ("ms", "token latency p99 at the highest packet loss measured (loss)"),
    },
    facts=facts,
    charts=(charts_net.latency_vs_sweep,),
    captions={"latency_vs_sweep.png": "Token latency and TTFT across the sweep"},
    reading=lambda run, facts: worst_point_reading(run),
)
