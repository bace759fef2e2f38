"""The http2 experiment, run small: every transport over HTTP/1.1 and HTTP/2 through real
nginx and real Caddy, the SETTINGS each front really sent, and N streams from one client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from analysis.h2 import late_first_token, settings_row
from experiments import http2
from records import store
from tests.support import UNIT

pytestmark = pytest.mark.timeout(180 * UNIT)


def test_settings_row_takes_absent_parameters_at_their_initial_values() -> None:
    row = settings_row("x", {0x3: 128, 0x4: 65536})
    assert row["max_concurrent_streams"] == 128 and row["enable_connect_protocol"] == 0
    assert pd.isna(row["header_table_size"]) and row["sent"] == "0x3, 0x4"
    assert settings_row("y", {0x8: 1})["enable_connect_protocol"] == 1


def test_a_first_token_one_stream_late_is_late() -> None:
    streams = pd.DataFrame({"ttft_ms": [50.0, 52.0, 51.0, 1060.0], "e2e_ms": [1000.0] * 4})
    assert late_first_token(streams).tolist() == [False, False, False, True]


@pytest.mark.slow
def test_quick_http2_completes_every_stream_and_finds_each_fronts_limit(tmp_path: Path) -> None:
    # streams of 2 s (quick: 0.8 s): all 150 are open at once even on a loaded machine
    # one transport of each kind (every transport runs in the suite's quick run), and the one
    # N that crosses nginx's limit: the test's share of CI's ten minutes
    spec = dataclasses.replace(http2.quick(http2.Spec()), concurrency_rate=4.0,
                               transports=("sse", "websocket", "longpoll"), ns=(150,))  # fmt: skip
    tables = http2.run(spec, run_id="test")
    streams = tables.streams
    assert (streams["error"] == "").all() and (streams["lost"] == 0).all()
    assert (streams["tokens_received"] == streams["tokens_expected"]).all()
    # every front, HTTP version and transport measured; WebSocket keeps HTTP/1.1 under HTTP/2
    part1 = streams[streams["sweep"] == "http_version"]
    assert len(part1.groupby(["condition", "transport"])) == 4 * len(spec.transports)
    over_h2 = part1[part1["condition"].str.endswith("HTTP/2")].set_index("transport")
    assert set(over_h2.loc["websocket", "http_version"]) == {"1.1"}
    assert set(over_h2.loc["sse", "http_version"]) == {"2"}
    # the SETTINGS as sent: neither front offers RFC 8441, each has its stream limit
    settings = tables.extra["h2_settings"].set_index("front")
    assert (settings["enable_connect_protocol"] == 0).all()
    assert settings.loc["nginx", "max_concurrent_streams"] == 128
    assert settings.loc["caddy", "max_concurrent_streams"] == 250
    # N streams: HTTP/1.1 opens N connections, HTTP/2 one; beyond nginx's 128 streams wait
    conc = tables.extra["h2_concurrency"].set_index(["front", "http", "n"])
    top = max(spec.ns)
    assert conc.loc[("nginx", "1.1", top), "connections"] == top
    assert conc.loc[("nginx", "2", top), "connections"] == 1
    assert conc.loc[("nginx", "2", top), "slot_waits"] == top - 128
    assert conc.loc[("caddy", "2", top), "slot_waits"] == 0
    assert (conc["completed"] == conc["streams"]).all()
    # the report's pieces read back from a stored run
    run = store.load(store.save(tables, {"experiment": "http2"}, tmp_path / "run"))
    titles = [title for title, _ in http2.tables(run)]
    assert len(titles) == 4
    facts = pd.DataFrame(http2.facts(run)).T
    assert facts.loc["sse", "h2_conns_per_stream"] == 1 / top
    text = http2.reading(run, facts)
    assert "nginx sent SETTINGS_MAX_CONCURRENT_STREAMS 128" in text
    assert "does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL" in text
    assert len(http2.EXPERIMENT.draw(run)) == 2


@pytest.mark.slow
def test_h2_throughput_benchmark_reads_one_stream_over_each_version() -> None:
    from benchmarks import h2_throughput, report, summary

    trials = h2_throughput.measure(2000, 1, lambda labels, measure: {**labels, **measure()})
    by_side = {t["side"]: t for t in trials}
    assert set(by_side) == {"h1", "h2"}
    for side, version in (("h1", "1.1"), ("h2", "2")):
        trial = by_side[side]
        assert (trial["http_version"], trial["connections"]) == (version, 1)
        assert trial["tokens_lost"] == 0 and trial["stream_errors"] == 0
        assert trial["tokens_per_s"] > 0 and trial["client_cpu_per_token_us"] > 0
    (row,) = summary.targets(trials, {})
    assert (row["side"], row["goal"]) == ("h2", "ratio >= 0.5")
    doc = {"meta": {}, "trials": trials, "targets": [row], "details": summary.details(trials)}
    assert "h2_throughput" in report._details(doc)[0]
