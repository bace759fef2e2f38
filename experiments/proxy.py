"""Experiment `proxy`: every transport through real nginx, in the modes an architect meets.

Modes (netem/nginx.py): `direct` (no nginx, the baseline), `unbuffered` (proxy_buffering
off), `buffered` (proxy_buffering on, the server sends no X-Accel-Buffering), `accel-header`
(buffering on, the server's `X-Accel-Buffering: no` turns it off per response), `gzip`
(gzip on for the streaming types; clients accept gzip), `buffered-http1.0` (buffering on and
HTTP/1.0 between nginx and the server, nginx's default `proxy_http_version`).
The literature expects buffering to turn SSE and NDJSON into one late burst; the measurement
decides. Per stream, `arrival spread` = (last token read - first token read) / (last token
emitted - first token emitted): 1 means it streamed as generated, 0 means one burst.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.derived import arrival_spread_table, proxy_summary
from analysis.readings import extremes
from clients.base import ClientOptions
from clients.recorder import to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, measure_records, run_sync, server_target
from experiments.spec import RunSpec
from netem.nginx import MODES, Nginx, server_args_for
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "proxy"
ALL_MODES = ("direct", *MODES)


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    modes: tuple[str, ...] = ALL_MODES
    tokens: int = 20
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(
        spec, modes=("direct", "buffered", "buffered-http1.0"), tokens=10, rate=40.0, clients=1
    )


def points(spec: Spec, mode: str) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    options = dataclasses.replace(spec.options, accept_gzip=mode == "gzip")
    return [
        Point(
            t,
            params,
            condition=f"nginx {mode}" if mode != "direct" else "direct",
            sweep=("mode", ALL_MODES.index(mode)),
            clients=spec.clients,
            options=options,
        )
        for t in spec.transports
    ]


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    parts, path_rows = [], []
    with tqdm(
        total=len(spec.modes) * len(spec.transports), desc=NAME, unit="point", disable=not progress
    ) as bar:
        for mode in spec.modes:
            args = [] if mode == "direct" else server_args_for(mode)
            with server_target(None, args) as server:
                nginx = None if mode == "direct" else Nginx(MODES[mode], server.host, server.port)
                target = nginx.start() if nginx else server
                try:
                    for point in points(spec, mode):
                        records = run_sync(measure_records(point, target))
                        parts.append(to_tables(records, condition_keys(run_id, NAME, point)))
                        bar.update()
                finally:
                    if nginx is not None:
                        nginx.stop()
                        # proof that nginx was in the path: the requests it logged
                        logged = len(nginx.access_log().splitlines())
                        path_rows.append(
                            {
                                "mode": mode,
                                "nginx_requests_logged": logged,
                                "server_args": " ".join(args),
                            }
                        )
    tables = concat(parts)
    return dataclasses.replace(
        tables, extra={"nginx": pd.DataFrame(path_rows).assign(run_id=run_id)}
    )


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    spread = arrival_spread_table(run.tokens)
    behind = spread[spread["condition"] != "direct"]
    per_mode = behind.groupby(["transport", "condition"])["arrival_spread"].median()
    return {
        str(t): {"proxy_min_spread": float(v)} for t, v in per_mode.groupby(level=0).min().items()
    }


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    lo, lo_v, _, _ = extremes(f["proxy_min_spread"])
    streamed = f[f["proxy_min_spread"] >= 0.8].index.tolist()
    return (
        f"Streamed as generated behind every nginx mode: {', '.join(streamed) or 'none'}. "
        f"The worst arrival spread was {lo_v:.2f} ({lo}; 0 means one burst at the end)."
    )


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    out = [("Proxy summary (medians per stream)", proxy_summary(run))]
    if "nginx" in run.extra:
        out.append(("nginx in the path (requests in its access log)", run.extra["nginx"]))
    return out


EXPERIMENT = Experiment(
    NAME,
    "every transport through real nginx: buffering, X-Accel-Buffering, gzip, HTTP/1.0",
    Spec,
    quick,
    run,
    figures={
        "proxy_min_spread": ("", "worst arrival spread over nginx modes: 1 streamed, 0 one burst"),
    },
    facts=facts,
    charts=(charts_net.arrival_spread,),
    captions={"arrival_spread.png": "How tokens arrive through each proxy mode"},
    tables=tables,
    reading=reading,
)
