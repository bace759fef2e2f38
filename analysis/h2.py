"""HTTP/1.1 against HTTP/2, read from the records: per-path summaries, the server's SETTINGS,
and what N concurrent streams from one client cost in connections and waiting.

Theory of operation. Everything here is a function of tables already recorded (the streams
and tokens tables of records/schema.py) or of the SETTINGS values a client read off the wire;
nothing is estimated. Two readings need a rule, written here once:

- a stream's first token was *late* when it came more than half a stream's duration after
  the median stream's (its TTFT above median TTFT + median e2e / 2). A stream beyond the
  server's SETTINGS_MAX_CONCURRENT_STREAMS is opened only when an earlier one ends (RFC 9113
  5.1.2), so its first token comes about one stream later. This reads the records alone and
  cross-checks the client's own count of streams that waited (`H2Session.slot_waits`, which
  the http2 experiment records beside it); it misses waiters when the streams' start-up
  spread approaches a stream's duration (measured: 150 streams from one Python client on a
  loaded 2-core machine spread their first tokens over 60-560 ms; 0.25-s streams hid them).
- a SETTINGS parameter the server did not send has its initial value (RFC 9113 6.5.2):
  SETTINGS_ENABLE_CONNECT_PROTOCOL absent means 0 (RFC 8441 3: no extended CONNECT, so no
  WebSocket over HTTP/2); SETTINGS_MAX_CONCURRENT_STREAMS absent means unlimited (NaN here).

Pure pandas, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

# RFC 9113 6.5.2 and RFC 8441 3: identifier -> column
SETTINGS = {
    0x1: "header_table_size",
    0x2: "enable_push",
    0x3: "max_concurrent_streams",
    0x4: "initial_window_size",
    0x5: "max_frame_size",
    0x6: "max_header_list_size",
    0x8: "enable_connect_protocol",
}
ENABLE_CONNECT_PROTOCOL = 0x8


def settings_row(front: str, sent: Mapping[int, int]) -> dict[str, object]:
    """One row of what `front` sent in its first SETTINGS frame: every known parameter (NaN
    when not sent), `enable_connect_protocol` 0 when not sent (its initial value), and the
    identifiers sent, in order."""
    row: dict[str, object] = {"front": front}
    for code, name in SETTINGS.items():
        row[name] = float(sent[code]) if code in sent else math.nan
    row["enable_connect_protocol"] = int(sent.get(ENABLE_CONNECT_PROTOCOL, 0))
    row["sent"] = ", ".join(f"0x{code:x}" for code in sent)
    return row


def late_first_token(streams: pd.DataFrame) -> pd.Series:
    """Per stream: was its first token late (module docstring)?"""
    ttft = streams["ttft_ms"]
    return ttft > ttft.median() + streams["e2e_ms"].median() / 2


def concurrency_row(streams: pd.DataFrame, tokens: pd.DataFrame) -> dict[str, float]:
    """N streams from one client: completed, connections used (summed over the streams: a
    shared HTTP/2 connection is counted once), TTFT p50 and max, token latency p99, and how
    many first tokens came late (module docstring)."""
    n = len(streams)
    latency = tokens["latency_ms"]
    return {
        "streams": float(n),
        "completed": float(((streams["error"] == "") & (streams["lost"] == 0)).sum()),
        "connections": float(streams["connections"].sum()),
        "conns_per_stream": float(streams["connections"].sum()) / n if n else math.nan,
        "ttft_p50_ms": float(streams["ttft_ms"].median()),
        "ttft_max_ms": float(streams["ttft_ms"].max()),
        "latency_p99_ms": float(latency.quantile(0.99)) if len(latency) else math.nan,
        "late_first_token": float(late_first_token(streams).sum()),
    }


def _versions(values: pd.Series) -> str:
    return "/".join(sorted(set(values.fillna("").astype(str)) - {""}))


def summary(streams: pd.DataFrame, tokens: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: streams, completed, TTFT p50, token latency p99, bytes per token received
    (kernel count), the HTTP versions that actually carried the streams, connections."""
    out = streams.groupby(by, sort=False).agg(
        streams=("stream_id", "size"),
        completed=("error", lambda s: int((s == "").sum())),
        ttft_p50_ms=("ttft_ms", "median"),
        http_version=("http_version", _versions),
        connections=("connections", "sum"),
        tokens=("tokens_received", "sum"),
        bytes_down=("bytes_down", "sum"),
    )
    out["bytes_per_token"] = out["bytes_down"] / out["tokens"].where(out["tokens"] > 0)
    p99 = tokens.groupby(by, sort=False)["latency_ms"].quantile(0.99).rename("latency_p99_ms")
    out = out.join(p99)
    return out.drop(columns=["bytes_down"]).reset_index()


def bytes_per_token(streams: pd.DataFrame) -> float:
    """Kernel bytes received per token received over `streams` (NaN without tokens)."""
    tokens = streams["tokens_received"].sum()
    return float(streams["bytes_down"].sum() / tokens) if tokens else math.nan
