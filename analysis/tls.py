"""The `tls` experiment's derived tables: CPU per token by path, and handshakes full and
resumed. Pure pandas over a stored run's extra tables (`tls_cpu`, `tls_connections`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from records.store import StoredRun


def cpu_table(run: StoredRun) -> pd.DataFrame:
    """CPU microseconds per token delivered, server and front, per path and transport."""
    cpu = run.extra["tls_cpu"]
    cpu = cpu[~cpu["condition"].str.contains("cut")]
    tokens = cpu["tokens"].where(cpu["tokens"] > 0)
    return cpu.assign(
        server_us_per_token=cpu["server_cpu_s"] / tokens * 1e6,
        front_us_per_token=cpu["front_cpu_s"] / tokens * 1e6,
        total_us_per_token=(cpu["server_cpu_s"] + cpu["front_cpu_s"]) / tokens * 1e6,
    )[["condition", "transport", "tokens", "server_us_per_token", "front_us_per_token",
       "total_us_per_token"]]  # fmt: skip


def handshake_table(run: StoredRun) -> pd.DataFrame:
    """Per path: handshakes, how many resumed, and what a full and a resumed one cost."""
    conns = run.extra["tls_connections"]
    conns = conns[conns["tls_version"].fillna("") != ""]
    return conns.groupby(["condition", "resumed"], sort=False).agg(
        connections=("stream_id", "size"),
        handshake_ms_p50=("handshake_ms", "median"),
        handshake_ms_max=("handshake_ms", "max"),
        handshake_bytes_p50=("handshake_bytes", "median"),
    ).reset_index()


def first_token_table(streams: pd.DataFrame) -> pd.DataFrame:
    """Per path and transport, medians over streams: the first token as the client saw it
    (from the request, before the TCP connect), the TCP connect and the TLS handshake it
    includes, and the first token without them: what a client on a warm connection sees."""
    rows = streams[~streams["condition"].str.contains("cut", na=False)]
    rows = rows.assign(
        handshake=rows["tls_handshake_ms"].fillna(0.0),
        without=rows["ttft_ms"] - rows["connect_ms"].fillna(0.0)
        - rows["tls_handshake_ms"].fillna(0.0),
    )
    return rows.groupby(["condition", "transport"], sort=False).agg(
        streams=("stream_id", "size"),
        ttft_ms=("ttft_ms", "median"),
        connect_ms=("connect_ms", "median"),
        tls_handshake_ms=("handshake", "median"),
        ttft_without_handshakes_ms=("without", "median"),
    ).reset_index()
