"""Experiment `latency`: latency and overhead of every transport over a token-rate sweep.

Question: at the same generation schedule, what does each transport add to each token's
latency and to the bytes on the wire, and how many requests and connections does an
answer cost? One child server; for each rate and corpus, each transport in turn.
"""

from __future__ import annotations

import dataclasses
import itertools

from clients.base import ClientOptions
from experiments.engine import Point, run_points
from records.schema import Tables
from streams.params import GenParams
from transports.registry import KEYS

NAME = "latency"
SUMMARY = "latency and overhead per transport over a token-rate sweep, en and zh text"


@dataclasses.dataclass(frozen=True)
class Spec:
    transports: tuple[str, ...] = KEYS
    rates_hz: tuple[float, ...] = (5.0, 20.0, 50.0, 150.0)
    corpora: tuple[str, ...] = ("en", "zh")
    tokens: int = 20
    clients: int = 2  # concurrent streams per point
    ttft_ms: float = 100.0
    jitter: float = 0.0
    seed: int = 1
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
