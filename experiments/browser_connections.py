"""Experiment `browser-connections`: how many live streams can one browser tab hold?

Question: Chrome opens at most six HTTP/1.1 connections per origin (its socket pool's
per-group limit), and an EventSource holds its connection for the whole answer. So a tab
that opens a seventh stream to the same server should see it wait, with no first token,
until an earlier one ends; WebSockets are pooled separately and should not wait. For each
n in `ns`, one Chromium context opens n streams of the page's own client at once, first
EventSource (`sse`), then WebSocket, and records each stream's time to first token.

A stream is *stalled* when its first token comes later than `stall_deadline_ms`: the
stream's `ttft_ms` plus half its generation time. A queued stream can only start once a
whole earlier stream has ended, so it misses that deadline by about half the generation
time; a stream that got a connection at once beats it by as much.

The server is a child process (`python server.py`, which must mount the demo page), or
`spec.server`. Output: the browser clients' `tokens` and `streams` tables, and the extra
table `connections` (one row per stream: n_open, index, transport, ttft_ms, stalled).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from analysis.derived import stalled_summary
from clients.browser import BrowserSession, browser_tables, first_streaming_clients
from clients.recorder import StreamRecord, stream_row
from experiments.descriptor import Experiment
from experiments.engine import run_sync, server_target
from experiments.spec import RunSpec
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun


NAME = "browser-connections"
CONNECTION_COLUMNS = (
    "run_id",
    "n_open",
    "index",
    "transport",
    "stream_id",
    "ttft_ms",
    "deadline_ms",
    "stalled",
)


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    ns: tuple[int, ...] = tuple(range(1, 11))  # streams opened at once
    # the page's client keys: one HTTP streaming client, one on an upgraded connection
    transports: tuple[str, ...] = dataclasses.field(default_factory=first_streaming_clients)
    tokens: int = 12
    rate: float = 10.0  # tokens/s: each stream lasts ttft + tokens/rate, about 1.3 s
    ttft_ms: float = 100.0
    text: str = "en"
    server: str | None = None  # URL of a running server with the page; None: start one
    headless: bool = True


def quick(spec: Spec) -> Spec:
    """Six (all fit) and eight (two over the limit): about 10 s."""
    return dataclasses.replace(spec, ns=(6, 8))


def params_of(spec: Spec) -> GenParams:
    return GenParams(
        tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed, text=spec.text
    )


def stall_deadline_ms(params: GenParams) -> float:
    """A first token later than this means the stream waited for a connection."""
    return params.ttft_ms + 0.5 * params.tokens / params.rate * 1e3


def connection_rows(
    records: list[StreamRecord], n_open: int, params: GenParams, run_id: str
) -> list[dict[str, object]]:
    """One `connections` row per stream, in the order the page started them."""
    deadline = stall_deadline_ms(params)
    rows = []
    for index, rec in enumerate(records):
        ttft = float(stream_row(rec)["ttft_ms"])  # type: ignore[arg-type]
        rows.append(
            {
                "run_id": run_id,
                "n_open": n_open,
                "index": index,
                "transport": rec.transport,
                "stream_id": rec.stream_id,
                "ttft_ms": ttft,
                "deadline_ms": deadline,
                "stalled": math.isnan(ttft) or ttft > deadline,
            }
        )
    return rows


async def _measure(spec: Spec, url: str, run_id: str, progress: bool) -> Tables:
    from tqdm import tqdm

    params = params_of(spec)
    parts: list[Tables] = []
    rows: list[dict[str, object]] = []
    points = [(key, n) for key in spec.transports for n in spec.ns]
    with tqdm(total=len(points), desc=NAME, unit="point", disable=not progress) as bar:
        async with BrowserSession(url, headless=spec.headless) as session:
            for key, n in points:
                records = await session.run(key, params, n)
                keys = {
                    "run_id": run_id,
                    "experiment": NAME,
                    "condition": f"n={n}",
                    "sweep": "n_open",
                    "sweep_value": float(n),
                    "rate_hz": params.rate,
                    "corpus": params.text,
                }
                parts.append(browser_tables(records, keys))
                rows += connection_rows(records, n, params, run_id)
                bar.update()
    import pandas as pd

    tables = concat(parts)
    connections = pd.DataFrame(rows, columns=list(CONNECTION_COLUMNS))
    return dataclasses.replace(tables, extra={"connections": connections})


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """Every n for every transport, in one browser context, against one server."""
    with server_target(spec.server) as target:
        return run_sync(_measure(spec, target.url, run_id, progress))


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    table = run.extra.get("connections")
    if table is None:
        return []
    return [("Streams that stalled, per number opened at once", stalled_summary(table))]


EXPERIMENT = Experiment(
    NAME,
    "Chromium: EventSource streams beyond 6 per origin stall; WebSockets do not",
    Spec,
    quick,
    run,
    generic_charts=False,
    charts=(charts_net.connections_chart,),
    captions={"browser_connections.png": "Which streams got their first token in time"},
    tables=tables,
    # in the default suite (quick: about 16 s); without Chromium, BrowserSession raises
    # EnvironmentUnavailable and the suite skips it with that reason
    in_suite=True,
)
