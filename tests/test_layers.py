"""The derived TLS/HTTP/2 tables: byte layers that add up, the record arithmetic, and the
head-of-line reading of arrival times (pure pandas, hand-made inputs)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.hol import co_stalled_fraction, stalls
from analysis.layers import TLS13_RECORD_OVERHEAD, byte_layers, record_check
from records.schema import ADDED_IN_5, STREAM_COLUMNS


def _stream(**over: object) -> dict[str, object]:
    row: dict[str, object] = {c: 0 for c in STREAM_COLUMNS}
    row.update({c: "" for c, t in STREAM_COLUMNS.items() if t == "string"})
    row.update(ADDED_IN_5)
    row.update(stream_id="s", condition="c", transport="sse", connections=1)
    row.update(over)
    return row


def test_layers_add_up_to_the_kernel_count_over_tls() -> None:
    # 10 tokens of 4 bytes; SSE lines 60 bytes each; HTTP 200 bytes; 10 records of 22 bytes;
    # a 1,000-byte handshake: 40 + 560 + 200 + 220 + 1000 = 2020 bytes of TCP payload
    row = _stream(
        tokens_received=10, payload_bytes=40, body_bytes_down=640, app_bytes_down=840,
        tls_version="TLSv1.3", tls_overhead_down=220, tls_records_down=10,
        tls_setup_bytes_down=1000, bytes_down=2060,
    )  # fmt: skip
    out = byte_layers(pd.DataFrame([row]), ["condition"]).iloc[0]
    assert out["payload_per_token"] == 4
    assert out["transport_per_token"] == 60
    assert out["http_per_token"] == 20
    assert out["tls_records_per_token"] == 22
    assert out["tls_setup_per_conn"] == 1000
    assert out["tcp_per_token"] == 206
    per_token = sum(out[c] for c in ("payload_per_token", "transport_per_token",
                                    "http_per_token", "tls_records_per_token"))  # fmt: skip
    assert per_token * 10 + out["tls_setup_per_conn"] == 2060


def test_clear_text_has_zero_tls_layers_and_unknown_stays_unknown() -> None:
    clear = _stream(tokens_received=2, payload_bytes=8, body_bytes_down=50, app_bytes_down=90,
                    bytes_down=90, stream_id="a")  # fmt: skip
    out = byte_layers(pd.DataFrame([clear]), ["condition"]).iloc[0]
    assert out["tls_records_per_token"] == 0 and out["tls_setup_per_conn"] == 0
    browser = dict(clear, stream_id="b", body_bytes_down=-1)  # a client that cannot count bodies
    out = byte_layers(pd.DataFrame([clear, browser]), ["condition"]).iloc[0]
    assert math.isnan(out["transport_per_token"])  # one unknown makes the group unknown


def test_record_check_compares_kernel_overhead_with_22_bytes_a_record() -> None:
    row = _stream(tls_version="TLSv1.3", tls_records_down=10, bytes_down=2060,
                  app_bytes_down=840, tls_setup_bytes_down=1000)  # fmt: skip
    out = record_check(pd.DataFrame([row]), ["condition"]).iloc[0]
    assert out["measured_overhead"] == 220 == 10 * TLS13_RECORD_OVERHEAD
    assert out["ratio"] == pytest.approx(1.0)


def _arrivals(streams: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(sid, seq, int(ms * 1e6)) for sid, times in streams.items()
         for seq, ms in enumerate(times, 1)],
        columns=["stream_id", "seq", "t_recv_ns"],
    )  # fmt: skip


def test_a_stall_shared_by_every_stream_reads_as_head_of_line_blocking() -> None:
    every_50 = [i * 50.0 for i in range(10)]
    # all three streams hear nothing between 200 and 600 ms (one connection, one lost segment)
    shared = {s: [t for t in every_50 if not 200 < t < 600] + [600.0 + k, 650.0, 700.0]
              for k, s in enumerate("abc")}  # fmt: skip
    assert len(stalls(_arrivals(shared), interval_ms=50)) == 3
    assert co_stalled_fraction(_arrivals(shared), interval_ms=50) == (1.0, 3)


def test_a_stall_of_one_connection_alone_is_not_shared() -> None:
    every_50 = [i * 50.0 for i in range(10)]
    alone = {"a": [t for t in every_50 if not 200 < t < 450], "b": every_50, "c": every_50}
    assert co_stalled_fraction(_arrivals(alone), interval_ms=50) == (0.0, 1)
    fraction, seen = co_stalled_fraction(_arrivals({"b": every_50, "c": every_50}), 50)
    assert math.isnan(fraction) and seen == 0
