"""Experiment `latency`: latency and overhead of every transport over a token-rate sweep.

Question: at the same generation schedule, what does each transport add to each token's
latency and to the bytes on the wire, and how many requests and connections does an
answer cost? One child server; for each rate and corpus, each transport in turn.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import TYPE_CHECKING

from analysis.matrix import count_of
from analysis.readings import span
from clients.base import ClientOptions
from experiments.descriptor import Experiment
from experiments.engine import Point, run_points
from experiments.spec import RunSpec
from records.schema import Tables
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "latency"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    rates_hz: tuple[float, ...] = (5.0, 20.0, 50.0, 150.0)
    corpora: tuple[str, ...] = ("en", "zh")
    tokens: int = 20
    clients: int = 2  # concurrent streams per point
    ttft_ms: float = 100.0
    jitter: float = 0.0
    envelope: str = "text"
    server: str | None = None
    net: str = ""
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, rates_hz=(20.0, 150.0), corpora=("en",), tokens=10, clients=1)


def points(spec: Spec) -> list[Point]:
    """Every point the spec measures, in run order."""
    out = []
    for rate, corpus in itertools.product(spec.rates_hz, spec.corpora):
        params = GenParams(
            tokens=spec.tokens,
            rate=rate,
            ttft_ms=spec.ttft_ms,
            jitter=spec.jitter,
            seed=spec.seed,
            text=corpus,
            envelope=spec.envelope,
        )
        out += [
            Point(t, params, net=spec.net, clients=spec.clients, options=spec.options)
            for t in spec.transports
        ]
    return out


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """The tokens and streams tables of the whole sweep."""
    return run_points(
        points(spec), experiment=NAME, run_id=run_id, server=spec.server, progress=progress
    )


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Headline figures per transport at 20 tokens/s, English (else the first condition),
    with the sample sizes behind them (`n:<figure>`)."""
    streams, tokens = run.streams, run.tokens
    conditions = list(dict.fromkeys(streams["condition"]))
    pick = "rate=20 text=en" if "rate=20 text=en" in conditions else conditions[0]
    s, t = streams[streams["condition"] == pick], tokens[tokens["condition"] == pick]
    out: dict[str, dict[str, float]] = {}
    for transport, rows in s.groupby("transport"):
        tok = t[t["transport"] == transport]
        received = rows["tokens_received"].sum()
        n_streams, n_tokens = float(len(rows)), float(tok["latency_ms"].notna().sum())
        out[str(transport)] = {
            "ttft_p50_ms": rows["ttft_ms"].quantile(0.5),
            "ttft_p99_ms": rows["ttft_ms"].quantile(0.99),
            "latency_p50_ms": tok["latency_ms"].quantile(0.5),
            "latency_p99_ms": tok["latency_ms"].quantile(0.99),
            "bytes_per_token": rows["bytes_down"].sum() / received if received else math.nan,
            "overhead_ratio": rows["bytes_down"].sum() / max(1, rows["payload_bytes"].sum()),
            "requests_per_answer": rows["http_requests"].median(),
            "connections_per_answer": rows["connections"].median(),
            count_of("ttft_p50_ms"): n_streams,
            count_of("latency_p99_ms"): n_tokens,
            count_of("requests_per_answer"): n_streams,
        }
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    return " ".join((
        span(f["latency_p99_ms"], "Token latency p99", "ms", floor=0.5),
        span(f["bytes_per_token"], "Bytes down per token", "B"),
    ))  # fmt: skip


EXPERIMENT = Experiment(
    NAME,
    "latency and overhead per transport over a token-rate sweep, en and zh text",
    Spec,
    quick,
    run,
    figures={
        "ttft_p50_ms": ("ms", "time to first token, p50 (latency experiment)"),
        "ttft_p99_ms": ("ms", "time to first token, p99"),
        "latency_p50_ms": ("ms", "token latency, p50: server emit -> client receive"),
        "latency_p99_ms": ("ms", "token latency, p99"),
        "bytes_per_token": ("B", "bytes down per token, all framing included (kernel count)"),
        "overhead_ratio": ("x", "bytes down / token text bytes"),
        "requests_per_answer": ("", "HTTP requests per answer, median"),
        "connections_per_answer": ("", "connections per answer, median"),
    },
    facts=facts,
    reading=reading,
)
