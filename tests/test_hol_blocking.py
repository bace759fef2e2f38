"""Head-of-line blocking: the latency reading of analysis/hol.py on hand-made arrivals, and
the `hol-blocking` experiment at quick size through the real nginx (TLS, HTTP/2) inside a
network namespace with real nftables drops (needs Linux and root, like tests/test_netns.py).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.hol import co_held_fraction, point_summary
from experiments import hol_blocking
from experiments.catalog import EXPERIMENTS
from experiments.cli import main
from records import store
from tests.support import UNIT


def _tokens(streams: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """(emitted ms, received ms) per token, per stream."""
    return pd.DataFrame(
        [(sid, seq, int(e * 1e6), int(r * 1e6), r - e) for sid, times in streams.items()
         for seq, (e, r) in enumerate(times, 1)],
        columns=["stream_id", "seq", "t_emit_ns", "t_recv_ns", "latency_ms"],
    )  # fmt: skip


def _on_time(*emitted: float) -> list[tuple[float, float]]:
    return [(e, e + 1.0) for e in emitted]


def test_a_token_held_with_every_other_streams_bytes_reads_as_shared() -> None:
    # one connection: a segment lost at 100 ms holds every stream's bytes until 160 ms
    held = {s: [*_on_time(0, 50), (100.0 + k * 0.1, 160.0), (150.0, 160.2), *_on_time(200)]
            for k, s in enumerate("abc")}  # fmt: skip
    fraction, late = co_held_fraction(_tokens(held))
    assert (fraction, late) == (1.0, 3)  # 100 -> 160 is late; 150 -> 160 is not (10 ms)


def test_a_token_held_alone_is_not_shared_and_nothing_late_is_nan() -> None:
    alone = {"a": [*_on_time(0, 50), (100.0, 160.0), *_on_time(150, 200)],
             "b": _on_time(0, 50, 100, 150, 200), "c": _on_time(0, 50, 100, 150, 200)}  # fmt: skip
    assert co_held_fraction(_tokens(alone)) == (0.0, 1)
    fraction, late = co_held_fraction(_tokens({"b": _on_time(0, 50), "c": _on_time(0, 50)}))
    assert math.isnan(fraction) and late == 0


def test_point_summary_counts_streams_connections_and_unknown_retransmits() -> None:
    tokens = _tokens({"a": _on_time(0, 50, 100), "b": [*_on_time(0, 50), (100.0, 130.0)]})
    streams = pd.DataFrame({"stream_id": ["a", "b"], "error": ["", "timeout"], "lost": [0, 0],
                            "connections": [1, 0], "gap_max_ms": [50.0, 80.0],
                            "ttft_ms": [100.0, 1100.0],
                            "retransmits": [-1, -1]})  # fmt: skip
    row = point_summary(tokens, streams, interval_ms=50.0)
    assert (row["streams"], row["completed"], row["connections"]) == (2, 1, 1)
    assert (row["ttft_ms_median"], row["ttft_ms_max"]) == (600.0, 1100.0)
    assert row["stream_p99_ms_max"] == pytest.approx(1 + 0.98 * 29)  # linear, of 1, 1, 30
    assert row["gap_max_ms"] == 80.0 and row["client_retransmits"] == -1
    assert (row["late_tokens"], row["co_held"]) == (1, 0.0)


def test_hol_blocking_is_listed_with_its_figures() -> None:
    experiment = EXPERIMENTS["hol-blocking"]
    assert set(experiment.figures) == {"hol_p99_h2_ms", "hol_p99_h1_ms", "hol_costalled",
                                       "hol_coheld"}  # fmt: skip
    quick = experiment.quick(hol_blocking.Spec())
    assert quick.streams == 8 and quick.losses_pct == (0.0, 5.0) and quick.transports == ("sse",)


@pytest.mark.slow
@pytest.mark.timeout(120 * UNIT)
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs Linux and root")
def test_quick_run_multiplexes_one_connection_against_n_and_reads_the_holds(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    assert main(["run", "hol-blocking", "--quick", "--out", str(out), "--no-progress"]) == 0
    run = store.load(out)
    n = hol_blocking.quick(hol_blocking.Spec()).streams
    (_, table), = hol_blocking.tables(run)
    assert list(table.columns) == [
        "loss_pct", "transport", "arm", "streams", "completed", "connections",
        "ttft_ms_median", "ttft_ms_max", "stream_p99_ms_median", "stream_p99_ms_max",
        "gap_max_ms", "stalls", "co_stalled", "late_tokens", "co_held", "client_retransmits",
        "dropped_in_packets", "dropped_out_packets",
    ]  # fmt: skip
    assert len(table) == 4 and (table["streams"] == n).all()
    clean = table[table["loss_pct"] == 0.0].set_index("arm")
    assert (clean["completed"] == n).all()  # every stream complete on the clean link
    assert (clean[["dropped_in_packets", "dropped_out_packets"]] == 0).all().all()
    # one TLS connection carried all N HTTP/2 streams; HTTP/1.1 took one each (ALPN decided)
    assert clean.loc[f"HTTP/2 x{n} one connection", "connections"] == 1
    assert clean.loc[f"HTTP/1.1 x{n} connections", "connections"] == n
    streams = run.streams[run.streams["sweep_value"] == 0.0]
    h2 = streams[streams["condition"].str.contains("HTTP/2")]
    # the shared connection is recorded once, on the stream that opened it (records/schema.py)
    assert h2["http_version"].tolist().count("2") == 1 and set(h2["http_version"]) <= {"2", ""}
    assert (h2["streams_per_conn"] == n).all()
    h1 = streams[streams["condition"].str.contains("HTTP/1.1")]
    assert (h1["http_version"] == "1.1").all() and (h1["tls_version"] != "").all()
    lossy = table[table["loss_pct"] == 5.0]
    assert (lossy["dropped_in_packets"] + lossy["dropped_out_packets"] > 0).all()
    facts = hol_blocking.EXPERIMENT.facts(run)["sse"]
    assert facts["n:hol_p99_h2_ms"] == n and facts["n:hol_p99_h1_ms"] == n
    assert {"hol_costalled", "hol_coheld"} <= set(facts)
    text = hol_blocking.EXPERIMENT.read(run, pd.DataFrame())
    assert text.startswith("At 5% loss (sse, 8 streams)")
    assert (out / "hol.png").is_file()
