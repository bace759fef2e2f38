"""Per-token and per-stream records, cheap to write while measuring, tidy afterwards.

While a stream runs, `StreamRecord.token()` appends five integers to preallocated-growth
`array('q')` columns: no object per token, no dict, nothing for the garbage collector to
walk. Everything derived (lost, duplicated, TTFT, gaps, percentiles) is computed by
`to_tables` after the measured window has closed.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from clients.net import ConnStats
from records.schema import STREAM_COLUMNS, TOKEN_COLUMNS, Tables, conform
from transports.token import TokenRecord

if TYPE_CHECKING:
    import pandas as pd


class StreamRecord:
    """Everything one client saw of one stream."""

    def __init__(
        self, transport: str, client: str, tokens_expected: int, envelope: str = "text"
    ) -> None:
        self.transport, self.client = transport, client
        self.tokens_expected = tokens_expected
        self.envelope = envelope
        self.stream_id = ""
        self.seq = array("q")
        self.t_emit_ns = array("q")
        self.t_recv_ns = array("q")
        self.t_recv_perf_ns = array("q")
        self.connection = array("q")
        self.texts: dict[int, str] = {}  # seq -> token text, first delivery only
        self.t_start_perf_ns = 0  # first request sent
        self.t_end_perf_ns = 0  # end of stream seen
        self.reconnects = 0
        self.http_requests = 0
        self.conns: list[ConnStats] = []
        self.body_bytes_down = -1  # the HTTP layer's count of body bytes (-1: not counted)
        self.streams_per_conn = 1  # streams that shared its connection (HTTP/2 multiplexing)
        self.error = ""
        self.end_reason = ""
        self.abandoned_ns = 0  # time.time_ns() when the client walked away (cancel case)
        self.recoveries_ms: list[float] = []  # connection broken -> next new token
        self.part_streams: list[str] = []  # stream ids of an answer asked for in parts
        self.continuation_gaps_ms: list[float] = []  # last token of a part -> next part's first
        self._continued_perf_ns = 0
        self._broken_perf_ns = 0

    def request_sent(self) -> None:
        """Mark the first request's send time (TTFT and e2e are measured from it)."""
        if not self.t_start_perf_ns:
            self.t_start_perf_ns = time.perf_counter_ns()

    def token(self, tok: TokenRecord, t_recv_ns: int, t_recv_perf_ns: int, connection: int) -> None:
        self.seq.append(tok.seq)
        self.t_emit_ns.append(tok.t_emit_ns)
        self.t_recv_ns.append(t_recv_ns)
        self.t_recv_perf_ns.append(t_recv_perf_ns)
        self.connection.append(connection)
        if tok.seq not in self.texts:
            self.texts[tok.seq] = tok.text
            if self._broken_perf_ns:
                self.recoveries_ms.append((t_recv_perf_ns - self._broken_perf_ns) / 1e6)
                self._broken_perf_ns = 0
            if self._continued_perf_ns:
                self.continuation_gaps_ms.append((t_recv_perf_ns - self._continued_perf_ns) / 1e6)
                self._continued_perf_ns = 0
        if not self.stream_id:
            self.stream_id = tok.stream

    @property
    def last_seq(self) -> int:
        """The highest seq received over the whole answer (the client's `ResumePoint`, not
        this, says where a resume continues)."""
        return max(self.seq) if self.seq else 0

    def text(self) -> str:
        """The answer as received: each seq's text once, in seq order."""
        return "".join(self.texts[s] for s in sorted(self.texts))

    def continuation_started(self, offset: int) -> None:
        """A follow-up request for the rest of the answer: its cost runs from the previous
        part's last token to this part's first."""
        self.part_streams.append(self.stream_id)
        self.stream_id = ""  # the follow-up is a new stream on the server
        self._continued_perf_ns = (
            self.t_recv_perf_ns[-1] if self.t_recv_perf_ns else time.perf_counter_ns()
        )

    def connection_broken(self) -> None:
        """The connection failed: recovery time runs until the next new token."""
        if not self._broken_perf_ns:
            self._broken_perf_ns = time.perf_counter_ns()

    def abandoned(self) -> None:
        self.abandoned_ns = time.time_ns()
        self.finished("abandoned")

    def finished(self, reason: str = "done") -> None:
        self.t_end_perf_ns = time.perf_counter_ns()
        self.end_reason = reason

    def failed(self, exc: BaseException) -> None:
        self.t_end_perf_ns = time.perf_counter_ns()
        self.error = f"{type(exc).__name__}: {exc}"[:300]


@contextmanager
def measuring() -> Iterator[None]:
    """The measured window: collect garbage before, keep the collector out during it."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _order_stats(seqs: Sequence[int]) -> tuple[int, int, int]:
    """(distinct, duplicated, out_of_order) deliveries in arrival order."""
    seen: set[int] = set()
    dup = ooo = 0
    highest = 0
    for s in seqs:
        if s in seen:
            dup += 1
            continue
        if s < highest:
            ooo += 1
        seen.add(s)
        highest = max(highest, s)
    return len(seen), dup, ooo


def stream_row(rec: StreamRecord) -> dict[str, object]:
    """One `streams` row (without the key columns shared by the whole run)."""
    import numpy as np

    distinct, dup, ooo = _order_stats(rec.seq)
    text_bytes = {seq: len(text.encode()) for seq, text in rec.texts.items()}
    expected_seen = sum(1 for s in rec.texts if 1 <= s <= rec.tokens_expected)
    first_idx = [i for i, s in enumerate(rec.seq) if text_bytes[s] > 0][:1]
    ttft_ms = (
        (rec.t_recv_perf_ns[first_idx[0]] - rec.t_start_perf_ns) / 1e6
        if first_idx
        else float("nan")
    )
    first_arrivals = _first_arrival_perf(rec)
    gaps = (
        np.diff(np.asarray(first_arrivals, dtype=np.int64)) / 1e6
        if len(first_arrivals) > 1
        else None
    )
    conns = rec.conns
    packets_known = bool(conns) and conns[0].packets_up >= 0
    return {
        "stream_id": rec.stream_id,
        "envelope": rec.envelope,
        "tokens_expected": rec.tokens_expected,
        "tokens_received": distinct,
        "lost": rec.tokens_expected - expected_seen,
        "duplicated": dup,
        "out_of_order": ooo,
        "ttft_ms": ttft_ms,
        "itl_p50_ms": float(np.percentile(gaps, 50)) if gaps is not None else float("nan"),
        "itl_p99_ms": float(np.percentile(gaps, 99)) if gaps is not None else float("nan"),
        "gap_max_ms": float(gaps.max()) if gaps is not None else float("nan"),
        "e2e_ms": (rec.t_end_perf_ns - rec.t_start_perf_ns) / 1e6
        if rec.t_end_perf_ns
        else float("nan"),
        "reconnects": rec.reconnects,
        "recovery_max_ms": max(rec.recoveries_ms) if rec.recoveries_ms else float("nan"),
        "continuations": len(rec.continuation_gaps_ms),
        "continuation_gap_max_ms": max(rec.continuation_gaps_ms)
        if rec.continuation_gaps_ms
        else float("nan"),
        "http_requests": rec.http_requests,
        "connections": len(conns),
        # one stack for all the stream's connections, else "mixed" ("" when it had none)
        "stack": conns[0].stack if len({c.stack for c in conns}) == 1 else "mixed" if conns else "",
        # -1 when a connection's wire bytes are unknown (a browser's WebTransport session)
        "bytes_up": _known_sum([c.bytes_up for c in conns]),
        "bytes_down": _known_sum([c.bytes_down for c in conns]),
        "app_bytes_up": sum(c.app_bytes_up for c in conns),
        "app_bytes_down": sum(c.app_bytes_down for c in conns),
        # one source for all the stream's connections (kernel, browser-cdp), else the app's count
        "bytes_source": conns[0].source if conns and len({c.source for c in conns}) == 1 else "app",
        "payload_bytes": sum(text_bytes.values()),
        "packets_up": sum(c.packets_up for c in conns) if packets_known else -1,
        "packets_down": sum(c.packets_down for c in conns) if packets_known else -1,
        "retransmits": sum(c.retransmits for c in conns)
        if conns and conns[0].retransmits >= 0
        else -1,
        **carrier_columns(rec),
        "end_reason": rec.end_reason,
        "error": rec.error,
    }


def _known_sum(values: list[int]) -> int:
    """The sum, or -1 when any value is unknown (-1)."""
    return -1 if any(v < 0 for v in values) else sum(values)


def _one(values: set[str]) -> str:
    """The one value all connections share, "mixed" if they differ, "" when none."""
    return values.pop() if len(values) == 1 else "mixed" if values else ""


def carrier_columns(rec: StreamRecord) -> dict[str, object]:
    """What carried the stream: HTTP version, TLS, multiplexing, and the counted layers."""
    conns = rec.conns
    tls = [c for c in conns if c.tls_version]
    first = conns[0] if conns else None

    def total(field: str) -> int:  # -1 unless every TLS connection counted it
        values = [getattr(c, field) for c in tls]
        return sum(values) if values and min(values) >= 0 else -1

    overhead = total("tls_record_bytes_down")
    if overhead >= 0:
        # plaintext of the data records is everything the TLS layer handed up
        overhead -= sum(c.app_bytes_down for c in tls)
    setup = total("tls_handshake_bytes_down")
    control = total("tls_control_bytes_down")
    return {
        "http_version": _one({c.http_version for c in conns if c.http_version}),
        "tls_version": _one({c.tls_version for c in tls}),
        "tls_cipher": _one({c.tls_cipher for c in tls}),
        "streams_per_conn": max([rec.streams_per_conn, *(c.streams for c in conns)]),
        "connect_ms": first.connect_ns / 1e6 if first and first.connect_ns >= 0 else float("nan"),
        "tls_handshake_ms": first.handshake_ns / 1e6
        if first and first.handshake_ns >= 0
        else float("nan"),
        "tls_resumed": sum(c.tls_resumed for c in tls) if tls else -1,
        "body_bytes_down": rec.body_bytes_down,
        "tls_records_down": total("tls_records_down"),
        "tls_overhead_down": overhead,
        "tls_setup_bytes_down": setup + control if setup >= 0 and control >= 0 else -1,
    }


def _first_arrival_perf(rec: StreamRecord) -> list[int]:
    seen: set[int] = set()
    out = []
    for s, t in zip(rec.seq, rec.t_recv_perf_ns, strict=True):
        if s not in seen:
            seen.add(s)
            out.append(t)
    return out


def connection_rows(
    records: Sequence[StreamRecord], keys: dict[str, object]
) -> list[dict[str, object]]:
    """One row per connection the records used: HTTP and TLS version, connect and handshake
    time, the handshake's bytes, resumed or not (an experiment's extra table)."""
    rows: list[dict[str, object]] = []
    for rec in records:
        for conn in rec.conns:
            rows.append({
                **keys, "transport": rec.transport, "stream_id": rec.stream_id,
                "index": conn.index, "http_version": conn.http_version,
                "tls_version": conn.tls_version, "connect_ms": conn.connect_ns / 1e6,
                "handshake_ms": conn.handshake_ns / 1e6 if conn.handshake_ns >= 0 else None,
                "resumed": conn.tls_resumed,
                "handshake_bytes": conn.tls_handshake_bytes_up + conn.tls_handshake_bytes_down
                if conn.tls_version else 0,
            })  # fmt: skip
    return rows


def to_tables(records: Sequence[StreamRecord], keys: dict[str, object]) -> Tables:
    """The run's records as schema tables; `keys` fills the shared key columns."""
    import numpy as np
    import pandas as pd

    token_frames: list[pd.DataFrame] = []
    rows = []
    for rec in records:
        row_keys = {
            **keys,
            "transport": rec.transport,
            "client": rec.client,
            "stream_id": rec.stream_id,
        }
        rows.append({**row_keys, **stream_row(rec)})
        seq = np.frombuffer(rec.seq, dtype=np.int64) if rec.seq else np.zeros(0, np.int64)
        emit = np.frombuffer(rec.t_emit_ns, dtype=np.int64) if rec.seq else np.zeros(0, np.int64)
        recv = np.frombuffer(rec.t_recv_ns, dtype=np.int64) if rec.seq else np.zeros(0, np.int64)
        frame = pd.DataFrame(
            {
                "seq": seq,
                "text_bytes": [len(rec.texts[int(s)].encode()) for s in seq],
                "t_emit_ns": emit,
                "t_recv_ns": recv,
                "latency_ms": (recv - emit) / 1e6,
                "connection": np.frombuffer(rec.connection, dtype=np.int64)
                if rec.seq
                else np.zeros(0, np.int64),
            }
        )
        for k, v in row_keys.items():
            frame[k] = v
        token_frames.append(frame)
    tokens = (
        pd.concat(token_frames, ignore_index=True)
        if token_frames
        else pd.DataFrame(columns=list(TOKEN_COLUMNS))
    )
    streams = pd.DataFrame(rows, columns=list(STREAM_COLUMNS))
    return Tables(tokens=conform(tokens, TOKEN_COLUMNS), streams=conform(streams, STREAM_COLUMNS))
