"""Experiment `hol-blocking`: does one lost segment stall every stream of a shared connection?

N token streams through one nginx (TLS, HTTP/2 listener, ALPN decides), in two arms: all N
over ONE HTTP/2 connection (as a browser tab shares one per origin), and N HTTP/1.1
connections over TLS. Server and nginx run in the lab's namespace (netem/fronts.py `link`),
where nftables drops TCP packets on the veth at the point's loss, both ways. HTTP/2 rides
TCP's single byte order: a lost segment holds every byte behind it, of every stream, until
it is retransmitted. Per point, from arrival times (analysis/hol.py), one row of the extra
table `hol`: per-stream p99, longest gap, stalls (gaps over 4 intervals) and how many other
streams shared each (co-stalled), tokens over 20 ms late and how many other streams were
held with each (co-held), and the packets dropped (warm-up on a clean link, not counted).

Measured (2-core VM, veth RTT under 1 ms, sse, 20 streams at 20/s, three runs): at 5 % the
shared connection's per-stream p99 stayed at 3-5 ms (clean: 2-3) while separate ones' rose
to 51 ms; nothing stalled. A busy connection learns of a loss from the segments behind it
(SACK, RACK) within a round trip, so all streams are held, for about a millisecond; a thin
one waits for the next token, an interval later. A slow recovery holds them all (once at
1 %: 37 late tokens, 99.9 % co-held; separate: 4-7 %), as does a lost SYN (all 8 first
tokens after 1.13 s, once). No netem here, so no RTT: at a real one each hold lasts at
least that. A busy machine co-holds separate connections too (0 %: 73 %, once): compare arms.
WebSocket has no HTTP/2 form here (no RFC 8441 front): one connection per stream in both arms.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.hol import HOL_COLUMNS, hol_facts, hol_reading, point_summary
from clients.base import ClientOptions
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, measure_records, run_sync
from experiments.spec import RunSpec
from netem.fronts import ServedPath, serve
from netem.netns import LinkSpec, NetnsLink
from presentation import charts_tls
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "hol-blocking"
NGINX_STREAMS = 128  # nginx's default http2_max_concurrent_streams: more need it raised


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = ("sse",)
    streams: int = 20  # N: on one HTTP/2 connection, or on N HTTP/1.1 connections
    losses_pct: tuple[float, ...] = (0.0, 1.0, 5.0)
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 100.0
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=10, interval_ms=100.0)
    )


    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ParamError("streams must be at least 1", param="streams")
        if any(not 0 <= loss < 100 for loss in self.losses_pct):
            raise ParamError("losses_pct: each loss must be in [0, 100)", param="losses_pct")


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, streams=8, losses_pct=(0.0, 5.0), tokens=30, rate=40.0)


def arms(n: int) -> tuple[tuple[str, str, int], ...]:
    """(label, HTTP version, streams per connection) of both arms."""
    return ((f"HTTP/2 x{n} one connection", "2", n), (f"HTTP/1.1 x{n} connections", "1.1", 1))


def _measure(point: Point, path: ServedPath, link: NetnsLink) -> tuple[list[StreamRecord], dict]:
    """Warm up on a clean link (one stream, alone), then the fleet at the point's loss, with
    the packets dropped meanwhile."""
    assert point.sweep is not None
    link.set_loss(0.0)
    alone = FleetSpec(point.transport, 1, stack=dataclasses.replace(point.stack, multiplex=1))
    run_sync(run_fleet(alone, path.target, WARMUP, point.options))
    link.set_loss(point.sweep[1])
    before = link.counters()
    records = run_sync(measure_records(point, path.target, warmup=False))
    after = link.counters()
    return records, {k: after[k] - before[k] for k in ("dropped_in_packets", "dropped_out_packets")}


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    plan = [(loss, t, arm) for loss in spec.losses_pct for t in spec.transports
            for arm in arms(spec.streams)]  # fmt: skip
    limit = spec.streams if spec.streams > NGINX_STREAMS else None
    parts, rows = [], []
    with (
        NetnsLink(LinkSpec()) as link,
        serve("nginx", link=link, max_concurrent_streams=limit) as path,
        tqdm(total=len(plan), desc=NAME, unit="point", disable=not progress) as bar,
    ):
        for loss, transport, (arm, http, multiplex) in plan:
            point = Point(transport, params, condition=f"loss={loss:g}% {arm}",
                          sweep=("loss_pct", loss), clients=spec.streams, options=spec.options,
                          stack=path.stack(http=http, multiplex=multiplex))  # fmt: skip
            records, dropped = _measure(point, path, link)
            keys = condition_keys(run_id, NAME, point)
            tables = to_tables(records, keys)
            parts.append(tables)
            summary = point_summary(tables.tokens, tables.streams, 1000.0 / spec.rate)
            rows.append({**keys, "loss_pct": loss, "arm": arm, "http": http,
                         "transport": transport, **summary, **dropped})  # fmt: skip
            bar.update()
    return dataclasses.replace(concat(parts), extra={"hol": pd.DataFrame(rows)})


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [("Head-of-line blocking: N streams on one HTTP/2 connection or N connections",
             run.extra["hol"][HOL_COLUMNS])]  # fmt: skip


FIGURES = {  # each at the highest loss measured
    "hol_p99_h2_ms": ("ms", "per-stream latency p99 (median), N streams on one HTTP/2 conn."),
    "hol_p99_h1_ms": ("ms", "per-stream latency p99 (median), N HTTP/1.1 connections (hol)"),
    "hol_costalled": ("", "other streams stalled with each stall, one HTTP/2 conn. (hol)"),
    "hol_coheld": ("", "other streams held with each late token, one HTTP/2 conn. (hol)"),
}

EXPERIMENT = Experiment(
    NAME,
    "N streams on one HTTP/2 connection or on N under loss: does one loss stall them all?",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures=FIGURES,
    facts=lambda run: hol_facts(run.extra["hol"]),
    charts=(charts_tls.hol_chart,),
    captions={"hol.png": "Per-stream tails and shared holds: one HTTP/2 connection or N"},
    tables=tables,
    reading=lambda run, facts: hol_reading(run.extra["hol"]),
    tcp_only="nginx (HTTP/2 over TCP)",
)
