"""Experiment `reconnect`: the connection is cut every K tokens; who recovers, and at what cost?

A fault-proxy process resets (or closes) every connection `cut_every_tokens / rate` seconds
after it opened, so a stream of many tokens sees repeated cuts. Each client reconnects its
own way (SSE with Last-Event-ID, WebSocket with a resume message, polling with its cursor,
NDJSON with stream & after, one-shot by asking again) and the tables say, per stream:
reconnects, longest time without a token, recovery time, tokens lost, duplicated.
"""

from __future__ import annotations

import dataclasses

from clients.base import ClientOptions
from experiments.engine import Point, run_points
from records.schema import Tables
from streams.params import GenParams
from transports.registry import KEYS

NAME = "reconnect"
SUMMARY = "connections cut every K tokens: recovery time, lost and duplicated tokens"


@dataclasses.dataclass(frozen=True)
class Spec:
    transports: tuple[str, ...] = KEYS
    cut_every_tokens: tuple[int, ...] = (10,)
    cut_mode: str = "rst"  # rst: a network failure; fin: an orderly close by a middlebox
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    seed: int = 1
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
