"""What each layer of the stack costs per token: derived from the streams table's counts.

Every column here is a ratio of sums of counted bytes (records/schema.py, version 5), never
an estimate. For the bytes a client received, top to bottom:

    payload            the token texts (UTF-8)
    transport framing  the transport's own bytes around them: SSE `id:`/`data:` lines, JSON
                       envelopes, WebSocket message JSON (body bytes - payload)
    HTTP framing       HTTP/1.1 status line, headers and chunk-size lines; HTTP/2 frame
                       headers, HPACK blocks, SETTINGS, WINDOW_UPDATE and PING frames; the
                       WebSocket upgrade response and frame headers (plaintext - body bytes)
    TLS records        per-record overhead of the data records: 5-byte header, content type
                       and AEAD tag, 22 bytes a record for TLS 1.3 AES-GCM (counted per record)
    TLS setup          the handshake and post-handshake control records (session tickets),
                       per connection rather than per token
    TCP payload        the kernel's count of everything above (tcpi_bytes_received)

The layers add up: payload + transport + HTTP + TLS records + TLS setup = TCP payload, except
where a client could not count a layer (a browser, an older run: -1 in the table, NaN here).
`record_check` compares the measured TLS overhead (kernel bytes minus plaintext minus setup)
with the record arithmetic (22 bytes times the records counted). What the arithmetic leaves
over (`unread_per_stream`) arrived in the kernel after the client had its answer and stopped
reading: measured in tests/test_tls.py, the server's close_notify (24 bytes: 5 header, 2
alert, 1 content type, 16 tag) and, for a chunked response, its last chunk (27 bytes).
"""

from __future__ import annotations

import pandas as pd

TLS13_RECORD_OVERHEAD = 22  # RFC 8446 5.2: 5-byte header + 1 content type + 16-byte AEAD tag

LAYER_COLUMNS = (
    "payload_per_token",
    "transport_per_token",
    "http_per_token",
    "tls_records_per_token",
    "tls_setup_per_conn",
    "tcp_per_token",
)


def _known(series: pd.Series) -> pd.Series:
    """-1 (not counted) as NaN, so one unknown makes its group's sum unknown."""
    return series.astype("float64").where(series >= 0)


def byte_layers(streams: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: tokens, connections, and each layer's bytes per token (received side)."""
    df = streams.assign(
        body=_known(streams["body_bytes_down"]),
        tls_overhead=_known(streams["tls_overhead_down"]),
        tls_setup=_known(streams["tls_setup_bytes_down"]),
        tls_records=_known(streams["tls_records_down"]),
        clear=(streams["tls_version"].fillna("") == "").astype("float64"),
    )
    # in clear text there are no TLS bytes: 0, not unknown
    for column in ("tls_overhead", "tls_setup", "tls_records"):
        df[column] = df[column].where(df["clear"] == 0, 0.0)
    sums = df.groupby(by, sort=False, dropna=False, observed=True).agg(
        streams=("stream_id", "size"),
        tokens=("tokens_received", "sum"),
        connections=("connections", "sum"),
        payload=("payload_bytes", "sum"),
        body=("body", lambda s: s.sum(min_count=len(s))),
        plain=("app_bytes_down", "sum"),
        tls_overhead=("tls_overhead", lambda s: s.sum(min_count=len(s))),
        tls_setup=("tls_setup", lambda s: s.sum(min_count=len(s))),
        tls_records=("tls_records", lambda s: s.sum(min_count=len(s))),
        tcp=("bytes_down", "sum"),
    )
    tokens = sums["tokens"].astype(float).where(sums["tokens"] > 0)
    conns = sums["connections"].astype(float).where(sums["connections"] > 0)
    out = sums[["streams", "tokens", "connections"]].copy()
    out["payload_per_token"] = sums["payload"] / tokens
    out["transport_per_token"] = (sums["body"] - sums["payload"]) / tokens
    out["http_per_token"] = (sums["plain"] - sums["body"]) / tokens
    out["tls_records_per_token"] = sums["tls_overhead"] / tokens
    out["tls_setup_per_conn"] = sums["tls_setup"] / conns
    out["tcp_per_token"] = sums["tcp"] / tokens
    out["records_per_token"] = sums["tls_records"] / tokens
    return out.reset_index()


def record_check(streams: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group over TLS streams: TLS overhead measured as kernel bytes - plaintext - setup,
    against 22 bytes x records counted; `ratio` 1.0 means the arithmetic explains it all."""
    tls = streams[(streams["tls_version"].fillna("") != "") & (streams["tls_records_down"] >= 0)]
    sums = tls.groupby(by, sort=False, dropna=False, observed=True).agg(
        streams=("stream_id", "size"),
        tcp=("bytes_down", "sum"),
        plain=("app_bytes_down", "sum"),
        setup=("tls_setup_bytes_down", "sum"),
        records=("tls_records_down", "sum"),
    )
    out = sums[["streams", "records"]].copy()
    out["measured_overhead"] = sums["tcp"] - sums["plain"] - sums["setup"]
    out["record_arithmetic"] = sums["records"] * TLS13_RECORD_OVERHEAD
    out["ratio"] = out["measured_overhead"] / out["record_arithmetic"].where(
        out["record_arithmetic"] > 0
    )
    out["unread_per_stream"] = (out["measured_overhead"] - out["record_arithmetic"]) / out[
        "streams"
    ]
    return out.reset_index()
