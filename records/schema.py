"""The record schema every client, experiment, store and chart shares (DESIGN.md, "Records").

Two tidy tables: `tokens` (one row per token received) and `streams` (one row per stream a
client ran). Condition columns (`condition`, `rate_hz`, `corpus`, ...) say which point of an
experiment's sweep a row belongs to, so one table holds a whole sweep.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is heavy; the clients' hot path never needs it
    import pandas as pd

SCHEMA_VERSION = 5  # 2: sweep, sweep_value, gap_max_ms, recovery_max_ms, end_reason;
# 3: retransmits, continuations, continuation_gap_max_ms;
# 4: columns that do not assume TCP: tcp_connections -> connections, segments_up/down ->
#    packets_up/down, new `stack` (records/store.py reads older runs through RENAMED_IN_4)
# 5: what carried each stream over TLS and HTTP/2: http_version, tls_*, streams_per_conn,
#    connect_ms, body_bytes_down (records/store.py fills them for older runs: ADDED_IN_5)

# streams columns renamed in version 4, old name -> new; runs stored before it were all TCP
RENAMED_IN_4: dict[str, str] = {
    "tcp_connections": "connections",
    "segments_up": "packets_up",
    "segments_down": "packets_down",
}

# streams columns added in version 5, with the value every run stored before it had: cleartext
# HTTP/1.1, one stream per connection, layers and handshake not counted
ADDED_IN_5: dict[str, object] = {
    "http_version": "1.1",
    "tls_version": "",
    "tls_cipher": "",
    "streams_per_conn": 1,
    "connect_ms": float("nan"),
    "tls_handshake_ms": float("nan"),
    "tls_resumed": -1,
    "body_bytes_down": -1,
    "tls_records_down": -1,
    "tls_overhead_down": -1,
    "tls_setup_bytes_down": -1,
}

# Columns shared by both tables: who measured what, under which condition.
KEY_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "experiment": "string",
    "transport": "string",  # registry key: sse, websocket, longpoll, ndjson, shortpoll, oneshot
    "client": "string",  # which client implementation: python, browser-..., openai-sdk
    "condition": "string",  # human label of the sweep point, e.g. "rate=20 text=en"
    "sweep": "string",  # name of the swept variable: rate_hz, rtt_ms, loss_pct, ...
    "sweep_value": "float64",  # its value at this point
    "rate_hz": "float64",  # generation rate asked for, tokens per second
    "corpus": "string",  # en, zh, mixed
    "stream_id": "string",
}

TOKEN_COLUMNS: dict[str, str] = {
    **KEY_COLUMNS,
    "seq": "int64",
    "text_bytes": "int64",  # UTF-8 size of the token text
    "t_emit_ns": "int64",  # server's time.time_ns() when the token was generated
    "t_recv_ns": "int64",  # client's time.time_ns() when the bytes carrying it were read
    "latency_ms": "float64",  # (t_recv_ns - t_emit_ns) / 1e6, same host, same clock
    "connection": "int64",  # index (0, 1, ...) of the connection or request that delivered it
}

STREAM_COLUMNS: dict[str, str] = {
    **KEY_COLUMNS,
    "envelope": "string",
    "tokens_expected": "int64",
    "tokens_received": "int64",  # distinct seqs received
    "lost": "int64",  # expected seqs never received
    "duplicated": "int64",  # deliveries of a seq already received
    "out_of_order": "int64",  # deliveries with a seq lower than one already received
    "ttft_ms": "float64",  # request sent -> first non-empty token read (perf_counter)
    "itl_p50_ms": "float64",  # gaps between consecutive token arrivals
    "itl_p99_ms": "float64",
    "gap_max_ms": "float64",  # longest time without a new token, between the first and last
    "e2e_ms": "float64",  # request sent -> end of stream seen
    "reconnects": "int64",
    "recovery_max_ms": "float64",  # longest: connection broken -> next new token (NaN: none)
    "continuations": "int64",  # follow-up requests for the rest of the answer (part_tokens)
    "continuation_gap_max_ms": "float64",  # longest: a part's last token -> the next's first
    "http_requests": "int64",  # HTTP requests sent, WebSocket upgrade included
    "connections": "int64",  # connections opened (TCP today; QUIC connections later)
    "stack": "string",  # what carried them: "tcp" ("tls", "quic" later; "mixed"; "": none)
    "bytes_up": "int64",  # payload bytes sent, all connections (kernel count when available)
    "bytes_down": "int64",  # payload bytes received, all connections
    "app_bytes_up": "int64",  # the same counted by the application, as a cross-check
    "app_bytes_down": "int64",
    "bytes_source": "string",  # "kernel" (TCP_INFO), "browser-cdp", or "app" (fallback)
    "payload_bytes": "int64",  # UTF-8 size of the token texts received, once each
    "packets_up": "int64",  # the stack's units sent: TCP tcpi_segs_out; -1 when unknown
    "packets_down": "int64",  # received: TCP tcpi_segs_in; -1 when unknown
    # tcpi_total_retrans: segments the CLIENT sent again (the server's own retransmissions
    # of the token stream are not visible here), -1 when unknown
    "retransmits": "int64",
    # What carried the stream (5). The bytes received split into layers, each counted:
    #   payload_bytes                      the token texts
    #   body_bytes_down - payload_bytes    transport framing (SSE lines, JSON envelopes)
    #   app_bytes_down - body_bytes_down   HTTP framing (HTTP/1.1 headers and chunk lines;
    #                                      HTTP/2 frames, HPACK, SETTINGS; WebSocket frames)
    #   bytes_down - app_bytes_down        TLS: handshake + per-record overhead (0 in clear)
    #   bytes_down                         TCP payload, the kernel's count
    "http_version": "string",  # "1.1", "2"; "mixed"; "" when no HTTP (none, or unknown)
    "tls_version": "string",  # "TLSv1.3", ...; "" in clear
    "tls_cipher": "string",  # e.g. TLS_AES_256_GCM_SHA384; "" in clear
    # most streams that shared one of its connections: 1 for HTTP/1.1; N when N streams
    # share an HTTP/2 connection (beyond the server's concurrent-stream limit some of them
    # waited for a slot on it). Then the shared connection's counts (connections, bytes_*,
    # packets_*, tls_*) are recorded once, on the stream that opened it, and 0 on the others:
    # sums over a condition are exact, one stream's bytes are not its own share
    "streams_per_conn": "int64",
    "connect_ms": "float64",  # the first connection's TCP connect (NaN: unknown)
    "tls_handshake_ms": "float64",  # its TLS handshake after connect (NaN: no TLS)
    "tls_resumed": "int64",  # connections whose TLS session was resumed (-1: no TLS)
    "body_bytes_down": "int64",  # response bodies / WebSocket message payloads (-1: unknown)
    "tls_records_down": "int64",  # TLS records that carried data after the handshake (-1)
    # those records' wire bytes minus their plaintext: 22 per TLS 1.3 AES-GCM record (-1)
    "tls_overhead_down": "int64",
    # handshake and post-handshake control records (session tickets, alerts) received (-1)
    "tls_setup_bytes_down": "int64",
    "end_reason": "string",  # done, cancelled, idle (server side), abandoned (client walked away)
    "error": "string",  # empty when the stream completed
}


@dataclasses.dataclass(frozen=True)
class Tables:
    """What an experiment run returns: the per-token and per-stream tables, plus any
    experiment-specific tables (`extra`, by name: e.g. the cancel experiment's server view) and
    text files kept with the run (`files`, file name -> text: e.g. each nginx.conf measured)."""

    tokens: pd.DataFrame
    streams: pd.DataFrame
    extra: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)


def empty_tables() -> Tables:
    import pandas as pd

    return Tables(
        tokens=pd.DataFrame({c: pd.Series(dtype=t) for c, t in TOKEN_COLUMNS.items()}),
        streams=pd.DataFrame({c: pd.Series(dtype=t) for c, t in STREAM_COLUMNS.items()}),
    )


def conform(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Order and type `df`'s columns as the schema says; missing columns are an error."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks schema columns: {', '.join(missing)}")
    return df[list(columns)].astype(columns)


def concat(parts: list[Tables]) -> Tables:
    """Stack several runs' tables (for example one per sweep point) into one."""
    import pandas as pd

    if not parts:
        return empty_tables()
    names = dict.fromkeys(name for p in parts for name in p.extra)
    return Tables(
        tokens=conform(pd.concat([p.tokens for p in parts], ignore_index=True), TOKEN_COLUMNS),
        streams=conform(pd.concat([p.streams for p in parts], ignore_index=True), STREAM_COLUMNS),
        extra={
            n: pd.concat([p.extra[n] for p in parts if n in p.extra], ignore_index=True)
            for n in names
        },
        files={name: text for p in parts for name, text in p.files.items()},
    )
