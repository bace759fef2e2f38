"""Headline facts per transport, read from stored runs of the experiments.

`collect(runs)` takes the stored runs of a suite (any subset of the experiments) and returns
one row per transport with the figures an architect compares; a figure whose experiment was
not run is NaN. Every number comes from the stored tables; nothing here is typed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from transports.registry import KEYS

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

# figure -> (unit, meaning), in headline order
FIGURES: dict[str, tuple[str, str]] = {
    "ttft_p50_ms": ("ms", "time to first token, p50 (latency experiment)"),
    "ttft_p99_ms": ("ms", "time to first token, p99"),
    "latency_p50_ms": ("ms", "token latency, p50: server emit -> client receive"),
    "latency_p99_ms": ("ms", "token latency, p99"),
    "bytes_per_token": ("B", "bytes down per token, all framing included (kernel count)"),
    "overhead_ratio": ("x", "bytes down / token text bytes"),
    "requests_per_answer": ("", "HTTP requests per answer, median"),
    "connections_per_answer": ("", "TCP connections per answer, median"),
    "cut_completed": ("frac", "streams completed while cut every ~10 tokens (reconnect)"),
    "cut_lost": ("tokens", "tokens lost across those cuts, all streams"),
    "cut_recovery_ms": ("ms", "longest recovery: cut -> next new token"),
    "loss_p99_ms": ("ms", "token latency p99 at the highest packet loss measured (loss)"),
    "proxy_min_spread": ("", "worst arrival spread over nginx modes: 1 streamed, 0 one burst"),
    "idle_timeout_ok": ("frac", "completed behind a 1 s proxy read timeout with keep-alives"),
    "cancel_wasted": ("tokens", "tokens generated after an explicit cancel (median)"),
    "cancel_extra_requests": ("", "extra HTTP requests an explicit cancel needs"),
    "leave_wasted": ("tokens", "tokens generated after the client just left (median)"),
    "idle_conn_kib": ("KiB", "server memory per idle connection (idle)"),
    "capacity_n": ("streams", "largest N with every token and p99 under target (scale)"),
    "relay_added_p50_ms": ("ms", "latency added to a model's stream, p50 (relay)"),
    "continuation_ms": ("ms", "cost of a follow-up request for the rest of an answer (relay)"),
}


def _latency(run: StoredRun) -> dict[str, dict[str, float]]:
    streams, tokens = run.streams, run.tokens
    conditions = list(dict.fromkeys(streams["condition"]))
    pick = "rate=20 text=en" if "rate=20 text=en" in conditions else conditions[0]
    s, t = streams[streams["condition"] == pick], tokens[tokens["condition"] == pick]
    out: dict[str, dict[str, float]] = {}
    for transport, rows in s.groupby("transport"):
        tok = t[t["transport"] == transport]
        received = rows["tokens_received"].sum()
        out[str(transport)] = {
            "ttft_p50_ms": rows["ttft_ms"].quantile(0.5),
            "ttft_p99_ms": rows["ttft_ms"].quantile(0.99),
            "latency_p50_ms": tok["latency_ms"].quantile(0.5),
            "latency_p99_ms": tok["latency_ms"].quantile(0.99),
            "bytes_per_token": rows["bytes_down"].sum() / received if received else math.nan,
            "overhead_ratio": rows["bytes_down"].sum() / max(1, rows["payload_bytes"].sum()),
            "requests_per_answer": rows["http_requests"].median(),
            "connections_per_answer": rows["tcp_connections"].median(),
        }
    return out


def _reconnect(run: StoredRun) -> dict[str, dict[str, float]]:
    out = {}
    for transport, rows in run.streams.groupby("transport"):
        out[str(transport)] = {
            "cut_completed": float((rows["error"] == "").mean()),
            "cut_lost": float(rows["lost"].sum()),
            "cut_recovery_ms": float(rows["recovery_max_ms"].max()),
        }
    return out


def _loss(run: StoredRun) -> dict[str, dict[str, float]]:
    worst = run.tokens[run.tokens["sweep_value"] == run.tokens["sweep_value"].max()]
    return {
        str(t): {"loss_p99_ms": float(r["latency_ms"].quantile(0.99))}
        for t, r in worst.groupby("transport")
    }


def _proxy(run: StoredRun) -> dict[str, dict[str, float]]:
    from presentation.charts_net import arrival_spread_table

    spread = arrival_spread_table(run.tokens)
    behind = spread[spread["condition"] != "direct"]
    per_mode = behind.groupby(["transport", "condition"])["arrival_spread"].median()
    return {
        str(t): {"proxy_min_spread": float(v)} for t, v in per_mode.groupby(level=0).min().items()
    }


def _idle_timeout(run: StoredRun) -> dict[str, dict[str, float]]:
    alive = run.streams[run.streams["sweep_value"] == run.streams["sweep_value"].max()]
    return {
        str(t): {"idle_timeout_ok": float((r["error"] == "").mean())}
        for t, r in alive.groupby("transport")
    }


def _cancel(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("cancel")
    if table is None:
        return {}
    keep = table[table["policy"] == "keep"]
    out: dict[str, dict[str, float]] = {}
    for transport, rows in keep.groupby("transport"):
        explicit, left = rows[rows["how"] == "cancel"], rows[rows["how"] == "close"]
        out[str(transport)] = {
            "cancel_wasted": float(explicit["wasted_tokens"].median()),
            # WebSocket cancels with a message on its open connection; HTTP needs a DELETE
            "cancel_extra_requests": 0.0 if transport == "websocket" else 1.0,
            "leave_wasted": float(left["wasted_tokens"].median()),
        }
    return out


def _idle(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("idle")
    if table is None:
        return {}
    return {
        str(r["transport"]): {"idle_conn_kib": float(r["rss_per_conn_bytes"]) / 1024}
        for _, r in table.iterrows()
    }


def _scale(run: StoredRun) -> dict[str, dict[str, float]]:
    from experiments.scale import capacity

    table = run.extra.get("scale")
    if table is None:
        return {}
    cap = capacity(table, float(table["target_p99_ms"].iloc[0]))
    return {str(r["transport"]): {"capacity_n": float(r["capacity_n"])} for _, r in cap.iterrows()}  # type: ignore[attr-defined]


def _relay(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("relay")
    if table is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for _, r in table.iterrows():
        entry = out.setdefault(str(r["transport"]), {})
        if r["condition"] == "relayed":
            entry["relay_added_p50_ms"] = float(r["added_latency_p50_ms"])
        elif r["continuations"] >= 1:
            entry["continuation_ms"] = float(r["continuation_gap_max_ms"])
    return out


EXTRACTORS: dict[str, Callable[[StoredRun], dict[str, dict[str, float]]]] = {
    "latency": _latency, "reconnect": _reconnect, "loss": _loss, "proxy": _proxy,
    "idle-timeout": _idle_timeout, "cancel": _cancel, "idle": _idle, "scale": _scale,
    "relay": _relay,
}  # fmt: skip


def collect(runs: Iterable[StoredRun]) -> pd.DataFrame:
    """One row per transport (registry order), one column per figure; NaN: not measured."""
    import pandas as pd

    rows: dict[str, dict[str, float]] = {}
    for run in runs:
        extractor = EXTRACTORS.get(str(run.meta.get("experiment")))
        for transport, values in (extractor(run) if extractor else {}).items():
            rows.setdefault(transport, {}).update(values)
    order = [k for k in KEYS if k in rows] + sorted(set(rows) - set(KEYS))
    return pd.DataFrame([rows[t] for t in order], index=pd.Index(order, name="transport")).reindex(
        columns=list(FIGURES)
    )
