"""Experiment `relay`: the same upstream model stream delivered over each transport.

An upstream model (by default a second pushlab server with LLM-like, jittered timing; or any
OpenAI-compatible URL via `upstream`) streams into a relay server (`--upstream`), and each
transport's clients read from the relay. The relay stamps each token on arrival, so token
latency here is exactly what the transport adds on top of the model's own timing; the
`relay` table sets it beside the model's inter-token gaps as the relay saw them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from analysis.matrix import count_of
from analysis.readings import extremes
from clients.base import ClientOptions
from experiments.descriptor import Experiment
from experiments.engine import Point, run_points
from experiments.spec import RunSpec, over_tcp
from harness.children import ServerProcess
from presentation import charts_arrival
from records.schema import Tables
from streams.params import GenParams
from transports.web.config import ServerConfig

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "relay"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    upstream: str = ""  # an OpenAI-compatible base URL (…/v1); "": a pushlab model process
    upstream_model: str = "pushlab-synthetic"
    tokens: int = 40
    rate: float = 20.0  # the pushlab model's timing
    ttft_ms: float = 300.0
    jitter: float = 0.5
    clients: int = 2
    part_tokens: int = 10  # the "continued" condition asks for this many tokens per request
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=12, rate=60.0, ttft_ms=50.0, clients=1, part_tokens=6)


@contextlib.contextmanager
def relay_server(spec: Spec) -> Iterator[str]:
    """The relay's URL, with the upstream model process behind it when we start one."""
    model = None
    upstream = spec.upstream
    extra = ""
    if not upstream:
        model = ServerProcess()
        upstream = f"{model.start().url}/v1"
        extra = json.dumps({"rate": spec.rate, "ttft_ms": spec.ttft_ms, "jitter": spec.jitter})
    relay = ServerProcess(config=ServerConfig(
        upstream=upstream, upstream_model=spec.upstream_model, upstream_extra=extra
    ))  # fmt: skip
    try:
        yield relay.start().url
    finally:
        relay.stop()
        if model is not None:
            model.stop()


def model_timing(tokens: object, streams: object) -> object:
    """Per condition and transport: the latency the transport adds, the model's gaps (arrival
    at the relay), the clients' gaps, and what each continuation request cost."""
    import pandas as pd

    df = pd.DataFrame(tokens).sort_values(["stream_id", "seq"])
    df["model_gap_ms"] = df.groupby("stream_id")["t_emit_ns"].diff() / 1e6
    df["client_gap_ms"] = df.groupby("stream_id")["t_recv_ns"].diff() / 1e6
    keys = ["condition", "transport"]
    continued = (
        pd.DataFrame(streams)
        .groupby(keys, sort=False)
        .agg(
            continuations=("continuations", "median"),
            continuation_gap_max_ms=("continuation_gap_max_ms", "median"),
        )
    )
    timing = df.groupby(keys, sort=False).agg(
        tokens=("seq", "size"),
        added_latency_p50_ms=("latency_ms", "median"),
        added_latency_p99_ms=("latency_ms", lambda s: s.quantile(0.99)),
        model_gap_p50_ms=("model_gap_ms", "median"),
        model_gap_p99_ms=("model_gap_ms", lambda s: s.quantile(0.99)),
        client_gap_p50_ms=("client_gap_ms", "median"),
        client_gap_p99_ms=("client_gap_ms", lambda s: s.quantile(0.99)),
    )
    return timing.join(continued).reset_index().sort_values(keys, ignore_index=True)


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, jitter=spec.jitter,
                       seed=spec.seed)  # fmt: skip
    continued = dataclasses.replace(spec.options, part_tokens=spec.part_tokens)
    points = [
        Point(t, params, condition=label, clients=spec.clients, options=options)
        for label, options in (("relayed", spec.options),
                               (f"relayed, continued every {spec.part_tokens} tokens", continued))
        for t in spec.transports
    ]  # fmt: skip
    with relay_server(spec) as url:
        tables = run_points(points, experiment=NAME, run_id=run_id, server=url, progress=progress)
    return dataclasses.replace(tables, extra={"relay": model_timing(tables.tokens, tables.streams)})


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("relay")
    if table is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for _, r in table.iterrows():
        entry = out.setdefault(str(r["transport"]), {})
        if r["condition"] == "relayed":
            entry["relay_added_p50_ms"] = float(r["added_latency_p50_ms"])
            entry[count_of("relay_added_p50_ms")] = float(r["tokens"])
        elif r["continuations"] >= 1:
            entry["continuation_ms"] = float(r["continuation_gap_max_ms"])
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    lo, lo_v, hi, hi_v = extremes(f["relay_added_p50_ms"])
    _, _, _, cont_v = extremes(f["continuation_ms"])
    return (
        f"Latency added to the model's stream (p50) ranged from {lo_v:.2f} ms ({lo}) to "
        f"{hi_v:.1f} ms ({hi}). A follow-up request for the rest of an answer cost up to "
        f"{cont_v:.0f} ms."
    )


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    if "relay" not in run.extra:
        return []
    title = "Relay: latency each transport adds to the model's stream, beside the model's gaps"
    return [(title, run.extra["relay"])]


EXPERIMENT = Experiment(
    NAME,
    "a real (or pushlab) model's stream relayed over each transport: added latency",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "relay_added_p50_ms": ("ms", "latency added to a model's stream, p50 (relay)"),
        "continuation_ms": ("ms", "cost of a follow-up request for the rest of an answer (relay)"),
    },
    facts=facts,
    charts=(charts_arrival.relay,),
    captions={"relay.png": "Latency each transport adds to the model's stream"},
    tables=tables,
    reading=reading,
)
