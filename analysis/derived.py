"""Derived tables: what the experiments' raw tables say once summarised per transport.

Pure pandas over stored tables (no drawing, no I/O), shared by the facts, the charts and the
report so that a figure is computed in one place. Each function names the table it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from records.schema import Tables
    from records.store import StoredRun


def reconnect_summary(streams: pd.DataFrame) -> pd.DataFrame:
    """Per transport and condition: completion, reconnects, recovery, gaps, loss, duplicates."""
    groups = streams.groupby(["transport", "condition"], sort=False)
    out = groups.agg(
        streams=("stream_id", "size"),
        completed=("error", lambda e: int((e == "").sum())),
        reconnects_median=("reconnects", "median"),
        recovery_max_ms=("recovery_max_ms", "max"),
        gap_max_ms=("gap_max_ms", "max"),
        lost=("lost", "sum"),
        duplicated=("duplicated", "sum"),
        connections_median=("connections", "median"),
    ).reset_index()
    return out


def cancel_summary(cancel: pd.DataFrame) -> pd.DataFrame:
    """Per transport, way of leaving and server policy: tokens nobody read, time to stop."""
    out = cancel.groupby(["policy", "how", "transport"], sort=False).agg(
        streams=("stream_id", "size"),
        tokens_read=("tokens_read", "median"),
        wasted_tokens=("wasted_tokens", "median"),
        stop_ms=("stop_ms", "median"),
        server_reason=("server_reason", lambda r: ",".join(sorted(set(map(str, r))))),
    )
    return out.reset_index()


def arrival_spread_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per stream: (last read - first read) / (last emit - first emit); 1 streamed, 0 burst."""
    firsts = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    per = firsts.groupby(["condition", "transport", "stream_id"], sort=False).agg(
        recv_first=("t_recv_ns", "min"),
        recv_last=("t_recv_ns", "max"),
        emit_first=("t_emit_ns", "min"),
        emit_last=("t_emit_ns", "max"),
    )
    emitted = (per["emit_last"] - per["emit_first"]).where(lambda s: s > 0)
    per["arrival_spread"] = (per["recv_last"] - per["recv_first"]) / emitted
    return per.reset_index()[["condition", "transport", "stream_id", "arrival_spread"]]


def proxy_summary(run: Tables | StoredRun) -> pd.DataFrame:
    """Per condition (proxy mode) and transport: TTFT p50, spread median, completion."""
    spread = arrival_spread_table(run.tokens)
    streams = run.streams.merge(spread, on=["condition", "transport", "stream_id"], how="left")
    out = streams.groupby(["condition", "transport"], sort=False).agg(
        streams=("stream_id", "size"),
        completed=("error", lambda e: int((e == "").sum())),
        ttft_p50_ms=("ttft_ms", "median"),
        e2e_p50_ms=("e2e_ms", "median"),
        arrival_spread=("arrival_spread", "median"),
    )
    return out.reset_index()


def capacity(
    scale: pd.DataFrame, target_p99_ms: float, by: str | list[str] = "transport"
) -> pd.DataFrame:
    """Per transport (or `by`): the largest N with every token delivered and p99 under the
    target."""
    df = pd.DataFrame(scale)
    ok = df[
        (df["delivered_ratio"] >= 1.0)
        & (df["errors"] == 0)
        & (df["latency_p99_ms"] < target_p99_ms)
    ]
    best = ok.groupby(by)["n"].max()
    tried = df.groupby(by)["n"].max()
    return pd.DataFrame(
        {"capacity_n": best.reindex(tried.index).fillna(0).astype(int), "largest_n_tried": tried}
    ).reset_index()


def stalled_summary(connections: pd.DataFrame) -> pd.DataFrame:
    """Per path (in run order), transport and n: streams opened, stalled, the slowest first
    token, and the distinct connections they used (-1: not recorded). Runs stored before
    browser-connections had paths were all cleartext HTTP/1.1: their path reads "http1.1"."""
    table = connections.copy()
    if "path" not in table:
        table["path"] = "http1.1"
    if "connections_used" not in table:
        table["connections_used"] = -1
    paths = list(dict.fromkeys(table["path"]))  # the order the run measured them in
    table["path"] = pd.Categorical(table["path"], categories=paths, ordered=True)
    summary = (
        table.groupby(["path", "transport", "n_open"], sort=True, observed=True)
        .agg(
            streams=("index", "size"),
            stalled=("stalled", "sum"),
            ttft_max_ms=("ttft_ms", "max"),
            connections_used=("connections_used", "max"),
        )
        .reset_index()
    )
    summary["path"] = summary["path"].astype(str)
    return summary
