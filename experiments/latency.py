"""Experiment `latency`: latency and overhead of every transport over a token-rate sweep.

Question: at the same generation schedule, what does each transport add to each token's
latency and to the bytes on the wire, and how many requests and connections does an
answer cost? One child server; for each rate and corpus, each transport in turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from clients.base import ClientOptions
from clients.schema import Tables, concat
from experiments.bench import condition_keys, measure, server_target
from streams.params import GenParams
from transports.registry import KEYS


@dataclasses.dataclass(frozen=True)
class LatencySpec:
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
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def points(spec: LatencySpec) -> list[tuple[GenParams, str]]:
    """Every (generation, transport) pair the spec measures, in run order."""
    out: list[tuple[GenParams, str]] = []
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
        out.extend((params, t) for t in spec.transports)
    return out


def run(spec: LatencySpec, run_id: str = "", progress: bool = False) -> Tables:
    """The tokens and streams tables of the whole sweep."""
    from tqdm import tqdm

    parts = []
    with server_target(spec.server) as target:
        for params, transport in tqdm(
            points(spec), desc="latency", unit="point", disable=not progress
        ):
            keys = condition_keys(run_id, "latency", params)
            parts.append(
                asyncio.run(
                    measure(
                        transport,
                        target,
                        params,
                        clients=spec.clients,
                        options=spec.options,
                        keys=keys,
                    )
                )
            )
    return concat(parts)
