"""Experiment `reconnect`: the connection is cut every K tokens; who recovers, and at what cost?

A fault-proxy process resets (or closes) every connection `cut_every_tokens / rate` seconds
after it opened, so a stream of many tokens sees repeated cuts. Each client reconnects its
own way (SSE with Last-Event-ID, WebSocket with a resume message, polling with its cursor,
NDJSON with stream & after, one-shot by asking again) and the tables say, per stream:
reconnects, longest time without a token, recovery time, tokens lost, duplicated.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.derived import reconnect_summary
from analysis.matrix import FIXED, count_of
from analysis.readings import span
from clients.base import ClientOptions
from experiments.descriptor import Experiment
from experiments.engine import Point, run_points
from experiments.spec import RunSpec, over_tcp
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "reconnect"


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    cut_every_tokens: tuple[int, ...] = (10,)
    cut_mode: str = "rst"  # rst: a network failure; fin: an orderly close by a middlebox
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    server: str | None = None
    # SSE `retry:` the server sends, one server process per value: the first is pushlab's
    # default (ServerConfig.retry_ms), the second the fix a reader should learn
    retry_ms: tuple[float, ...] = (1000.0, 100.0)
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=5, backoff_ms=50.0)
    )


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=30, rate=40.0, clients=1)


def retry_label(retry_ms: float | None) -> str:
    """The condition's suffix naming the server's SSE `retry:` (facts find it with endswith);
    None: a server given by URL, whose setting this run does not know."""
    return "retry: as served" if retry_ms is None else f"retry: {retry_ms:g} ms"


def points(spec: Spec, retry_ms: float | None = None) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    out = []
    for k in spec.cut_every_tokens:
        period_s = k / spec.rate  # every connection lives this long: about k tokens' worth
        net = f"cut_after={period_s:g}s,cut_mode={spec.cut_mode}"
        cut = f"cut every {period_s:g}s (~{k} tokens, {spec.cut_mode})"
        out += [
            Point(
                t,
                params,
                condition=f"{cut}, {retry_label(retry_ms)}",
                sweep=("cut_every_tokens", k),
                net=net,
                clients=spec.clients,
                options=spec.options,
            )
            for t in spec.transports
        ]
    return out


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """Every point once per `retry_ms` value, each against its own server process started with
    that `--retry-ms`; against a given `server` once, its retry unknown ("retry: as served")."""
    # no warm-up: a warm-up stream would itself be cut and only cost time
    if spec.server:
        return run_points(
            points(spec),
            experiment=NAME,
            run_id=run_id,
            server=spec.server,
            warmup=False,
            progress=progress,
        )
    parts = [
        run_points(
            points(spec, retry_ms),
            experiment=NAME,
            run_id=run_id,
            server_args=["--retry-ms", f"{round(retry_ms)}"],
            warmup=False,
            progress=progress,
        )
        for retry_ms in spec.retry_ms
    ]
    return concat(parts)


def _by_retry(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    """The streams under the server's default `retry:` (suffix "") and, when the run also
    measured a lower one, under it (suffix FIXED); runs before retry_ms existed: all default."""
    retries = list((run.meta.get("spec") or {}).get("retry_ms") or [])
    streams = run.streams
    if len(retries) < 2:
        return [("", streams)]
    default, fixed = (f"retry: {float(r):g} ms" for r in retries[:2])
    return [
        ("", streams[streams["condition"].str.contains(default, regex=False)]),
        (FIXED, streams[streams["condition"].str.contains(fixed, regex=False)]),
    ]


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Completion, loss and the longest recovery through the cuts, at the server's default
    SSE `retry:` and (`<figure>@fixed`) with the lower one, with their sample sizes."""
    out: dict[str, dict[str, float]] = {}
    for suffix, streams in _by_retry(run):
        for transport, rows in streams.groupby("transport"):
            figures = {
                "cut_completed": float((rows["error"] == "").mean()),
                "cut_lost": float(rows["lost"].sum()),
                "cut_recovery_ms": float(rows["recovery_max_ms"].max()),
            }
            entry = out.setdefault(str(transport), {})
            for name, value in figures.items():
                entry[name + suffix] = value
            entry[count_of("cut_completed" + suffix)] = float(len(rows))
            entry[count_of("cut_lost" + suffix)] = float(len(rows))
            entry[count_of("cut_recovery_ms" + suffix)] = float(rows["reconnects"].sum())
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    import pandas as pd

    ok = f[(f["cut_completed"] >= 1) & (f["cut_lost"] == 0)].index.tolist()
    failed = [t for t in f.index if t not in ok and pd.notna(f.at[t, "cut_completed"])]
    text = (
        f"Completed every stream through the cuts with no token lost: {', '.join(ok) or 'none'}"
        + (f"; not: {', '.join(failed)}." if failed else ".")
    )
    text += " " + span(f["cut_recovery_ms"], "The longest recovery", "ms", floor=20)
    fixed = f.get("cut_recovery_ms" + FIXED)
    if fixed is not None and fixed.notna().any():
        faster = (f["cut_recovery_ms"] - fixed).dropna()
        gained = faster[faster > 100]
        if gained.empty:
            text += " A lower SSE retry: changed no transport's recovery by more than 100 ms."
        else:
            moves = ", ".join(
                f"{t} {f.at[t, 'cut_recovery_ms']:.0f} -> {fixed[t]:.0f} ms" for t in gained.index
            )
            text += f" With the server's lower retry:, recovery went {moves}."
    return text


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [("Reconnect summary", reconnect_summary(run.streams))]


EXPERIMENT = Experiment(
    NAME,
    "connections cut every K tokens: recovery time, lost and duplicated tokens",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "cut_completed": ("frac", "streams completed while cut every ~10 tokens (reconnect)"),
        "cut_lost": ("tokens", "tokens lost across those cuts, all streams"),
        "cut_recovery_ms": ("ms", "longest recovery: cut -> next new token"),
    },
    facts=facts,
    charts=(charts_net.reconnect,),
    captions={"reconnect.png": "Recovery from repeated connection cuts"},
    tables=tables,
    reading=reading,
    tcp_only="the fault proxy that cuts connections",
)
