"""Experiment `idle-timeout`: a slow generation behind nginx with a short proxy_read_timeout.

Between two tokens the connection is silent for longer than nginx's `proxy_read_timeout`, so
nginx ends the response (or answers 504 to a held poll). With keep-alives (the server's
`--heartbeat-s`: an SSE comment, an empty NDJSON line, a WebSocket ping; for long polling a
hold shorter than the timeout) the connection never goes quiet that long. Per stream:
completed or not, reconnects, and tokens lost. All transports run at once in each variant
(what is measured here is survival, not latency).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from analysis.derived import reconnect_summary
from analysis.matrix import FIXED, count_of
from clients.base import ClientOptions, Target
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, run_sync, server_target
from experiments.spec import RunSpec, over_tcp
from netem.nginx import Nginx, NginxSpec
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "idle-timeout"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    read_timeout_s: float = 1.0  # nginx proxy_read_timeout
    heartbeat_s: float = 0.3  # the keep-alive variant's server heartbeat (and long-poll hold)
    tokens: int = 4
    rate: float = 0.5  # one token every 2 s: longer than the read timeout
    ttft_ms: float = 1500.0
    clients: int = 1


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=2, ttft_ms=1500.0)


def variants(spec: Spec) -> list[tuple[str, list[str], ClientOptions]]:
    """(label, server args, client options) without and with keep-alives."""
    quiet = ClientOptions(max_reconnects=3, wait_s=25.0)
    alive = ClientOptions(max_reconnects=3, wait_s=spec.heartbeat_s)
    return [
        ("no keep-alive", ["--heartbeat-s", "0"], quiet),
        (f"keep-alive {spec.heartbeat_s:g}s", ["--heartbeat-s", f"{spec.heartbeat_s:g}"], alive),
    ]


async def run_variant(points: list[Point], target: Target) -> list[list[StreamRecord]]:
    return list(
        await asyncio.gather(
            *(
                run_fleet(FleetSpec(p.transport, p.clients), target, p.params, p.options)
                for p in points
            )
        )
    )


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    from tqdm import tqdm

    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    nginx_spec = NginxSpec(buffering=False, read_timeout_s=spec.read_timeout_s)
    parts = []
    for i, (label, args, options) in enumerate(
        tqdm(variants(spec), desc=NAME, unit="variant", disable=not progress)
    ):
        condition = f"nginx read timeout {spec.read_timeout_s:g}s, {label}"
        points = [
            Point(
                t,
                params,
                condition=condition,
                sweep=("keep_alive", i),
                clients=spec.clients,
                options=options,
            )
            for t in spec.transports
        ]
        with (
            server_target(None, args) as server,
            Nginx(nginx_spec, server.host, server.port) as nginx,
        ):
            records = run_sync(run_variant(points, nginx.target))
        parts += [
            to_tables(r, condition_keys(run_id, NAME, p))
            for p, r in zip(points, records, strict=True)
        ]
    return concat(parts)


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Streams completed behind the proxy's read timeout without heartbeats (the default:
    nothing is sent while the model thinks) and (`@fixed`) with heartbeats shorter than it."""
    streams = run.streams
    quiet = streams[streams["sweep_value"] == streams["sweep_value"].min()]
    alive = streams[streams["sweep_value"] == streams["sweep_value"].max()]
    out: dict[str, dict[str, float]] = {}
    both = streams["sweep_value"].nunique() > 1
    for suffix, rows in (("", quiet), (FIXED, alive)) if both else (("", quiet),):
        for transport, r in rows.groupby("transport"):
            entry = out.setdefault(str(transport), {})
            entry["idle_timeout_ok" + suffix] = float((r["error"] == "").mean())
            entry[count_of("idle_timeout_ok" + suffix)] = float(len(r))
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    quiet = f["idle_timeout_ok"].dropna()
    text = (
        "Without heartbeats, completed behind a 1 s proxy read timeout (cut and resumed, or "
        f"never cut): {', '.join(quiet[quiet >= 1].index) or 'none'}"
        + (f"; not: {', '.join(quiet[quiet < 1].index)}." if (quiet < 1).any() else ".")
    )
    alive = f.get("idle_timeout_ok" + FIXED)
    if alive is not None and alive.notna().any():
        rescued = [t for t in quiet.index if quiet[t] < 1 and alive.get(t, 0.0) >= 1]
        failed = [t for t in alive.dropna().index if alive[t] < 1]
        if rescued:
            text += f" Heartbeats shorter than the timeout saved: {', '.join(rescued)}."
        if failed:
            text += f" Failed even with heartbeats: {', '.join(failed)}."
    return text


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [("Reconnect summary", reconnect_summary(run.streams))]


EXPERIMENT = Experiment(
    NAME,
    "slow generation behind nginx with a short read timeout, with and without heartbeats",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "idle_timeout_ok": ("frac", "completed behind a 1 s proxy read timeout with keep-alives"),
    },
    facts=facts,
    charts=(charts_net.reconnect,),
    captions={"reconnect.png": "Streams cut by nginx's read timeout: recovery, loss, completion"},
    tables=tables,
    reading=reading,
    tcp_only="nginx",
)
