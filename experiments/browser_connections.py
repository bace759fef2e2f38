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
from pathlib import Path
from typing import TYPE_CHECKING

from clients.browser import BrowserSession, browser_tables
from clients.recorder import StreamRecord, stream_row
from experiments.engine import run_sync, server_target
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from presentation.charts import RunLike

NAME = "browser-connections"
SUMMARY = "Chromium: EventSource streams beyond 6 per origin stall; WebSockets do not"
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
class Spec:
    ns: tuple[int, ...] = tuple(range(1, 11))  # streams opened at once
    transports: tuple[str, ...] = ("sse", "websocket")  # the page's client keys
    tokens: int = 12
    rate: float = 10.0  # tokens/s: each stream lasts ttft + tokens/rate, about 1.3 s
    ttft_ms: float = 100.0
    seed: int = 1
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


def stalled_summary(connections: pd.DataFrame) -> pd.DataFrame:
    """Per transport and n: streams opened, stalled, and the slowest first token."""
    return (
        connections.groupby(["transport", "n_open"], sort=True)
        .agg(
            streams=("index", "size"),
            stalled=("stalled", "sum"),
            ttft_max_ms=("ttft_ms", "max"),
        )
        .reset_index()
    )


def connections_chart(run_dir: RunLike) -> list[Path]:
    """`browser_connections.png`: each stream of each n, in start order: in time or stalled."""
    from presentation.charts import _as_run, _figure, _save, colour

    run = _as_run(run_dir)
    table = run.extra.get("connections")
    if table is None or table.empty:
        return []
    transports = sorted(table["transport"].unique())
    fig, axes = _figure(len(transports), width_in=5.4, height_in=4.4)
    for ax, transport in zip(axes, transports, strict=True):
        rows = table[table["transport"] == transport]
        ok, stalled = rows[~rows["stalled"]], rows[rows["stalled"]]
        deadline = float(rows["deadline_ms"].iloc[0])
        ax.scatter(
            ok["n_open"],
            ok["index"] + 1,
            s=55,
            color="#2ca02c",
            label=f"first token in time (max {ok['ttft_ms'].max():.0f} ms)" if len(ok) else None,
        )
        ax.scatter(
            stalled["n_open"],
            stalled["index"] + 1,
            marker="X",
            s=80,
            color="#d62728",
            label=f"stalled: no first token within {deadline:g} ms" if len(stalled) else None,
        )
        for _, row in stalled.iterrows():
            text = "never" if row["ttft_ms"] != row["ttft_ms"] else f"{row['ttft_ms'] / 1e3:.1f} s"
            ax.annotate(
                text,
                (row["n_open"], row["index"] + 1),
                xytext=(7, -3),
                textcoords="offset points",
                fontsize=6.5,
                color="#d62728",
            )
        ax.axhline(6.5, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(
            "Chrome: 6 HTTP/1.1 connections per origin",
            (0.01, 6.6),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="0.35",
        )
        top = int(rows["n_open"].max())
        ax.set_xticks(sorted(rows["n_open"].unique()))
        ax.set_xlim(rows["n_open"].min() - 0.6, top + 0.9)
        ax.set_ylim(0.3, top + 1.6)
        ax.set(
            title=transport,
            xlabel="streams opened at once in one tab",
            ylabel="stream (in start order)",
        )
        ax.title.set_color(colour(transport.removeprefix("browser-")))
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Which streams got their first token in time (one Chromium tab, one origin)")
    return [_save(fig, run.path / "browser_connections.png")]
