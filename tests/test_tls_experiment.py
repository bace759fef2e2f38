"""Experiment `tls`, run small: every byte layer counted, the record arithmetic holding, the
capture agreeing with the kernel, and reconnects resuming their TLS session.

Behaviour, not speed: the bounds come from TLS 1.3 itself (22 bytes a record with AES-GCM,
a resumed handshake sends no certificate), not from this machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from analysis.layers import TLS13_RECORD_OVERHEAD, byte_layers
from experiments import tls
from experiments.cli import main
from records.schema import Tables
from tests.support import UNIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180 * UNIT)]


@pytest.fixture(scope="module")
def tables() -> Tables:
    spec = dataclasses.replace(
        tls.quick(tls.Spec()), fronts=("none", "aiohttp", "nginx"), transports=("sse", "websocket")
    )
    return tls.run(spec)


def test_every_stream_completes_on_every_path(tables: Tables) -> None:
    streams = tables.streams
    assert set(streams["condition"]) >= {"clear", "TLS in aiohttp", "TLS in nginx"}
    assert (streams["error"] == "").all() and (streams["lost"] == 0).all()
    assert (streams["duplicated"] == 0).all()
    tls_rows = streams[streams["condition"] != "clear"]
    assert set(tls_rows[~tls_rows["condition"].str.contains("cut")]["tls_version"]) == {"TLSv1.3"}
    assert set(streams[streams["condition"] == "clear"]["tls_version"]) == {""}


def test_tls_overhead_is_22_bytes_a_record_and_streams_pay_a_record_a_token(tables: Tables) -> None:
    tls_rows = tables.streams[tables.streams["condition"] == "TLS in nginx"]
    records = tls_rows["tls_records_down"]
    assert (tls_rows["tls_overhead_down"] == TLS13_RECORD_OVERHEAD * records).all()
    layers = byte_layers(tls_rows, ["transport"]).set_index("transport")
    # each token is its own write, so its own record (a few more: headers, the end)
    assert (layers["records_per_token"] >= 1).all()
    # clear text pays no TLS at all, counted
    clear = byte_layers(tables.streams[tables.streams["condition"] == "clear"], ["transport"])
    assert (clear["tls_records_per_token"] == 0).all()


def test_kernel_counts_equal_our_capture_within_one_percent(tables: Tables) -> None:
    check = tables.extra["byte_check"]
    assert len(check) == 3 * 2 and (check["note"] == "").all()
    assert (check["capture_dropped"] == 0).all()
    assert check["up_ratio"].between(0.99, 1.01).all()
    assert check["down_ratio"].between(0.99, 1.01).all()


def test_reconnects_after_a_cut_resume_the_session_and_lose_nothing(tables: Tables) -> None:
    conns = tables.extra["tls_connections"]
    cut = conns[conns["condition"].str.startswith("TLS in aiohttp, cut")]
    resumed, full = cut[cut["resumed"]], cut[~cut["resumed"]]
    assert len(resumed) > 0 and (full["index"] == 0).all()  # only the first is a full one
    # a resumed handshake sends no certificate
    assert resumed["handshake_bytes"].max() < full["handshake_bytes"].min()
    streams = tables.streams[tables.streams["condition"].str.contains("cut")]
    assert (streams["reconnects"] > 0).all() and (streams["lost"] == 0).all()


def test_cpu_is_measured_for_the_server_and_the_front(tables: Tables) -> None:
    cpu = tables.extra["tls_cpu"].set_index(["front", "transport"])
    assert (cpu["server_cpu_s"] > 0).all()
    assert (cpu.loc["nginx", "front_cpu_s"] > 0).all()
    assert (cpu.loc["aiohttp", "front_cpu_s"] == 0).all()  # no front: TLS is the server's


def test_pushlab_run_tls_quick_writes_its_tables_chart_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["run", "tls", "--quick", "--transport", "sse", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    for name in ("tls_cpu.parquet", "tls_connections.parquet", "byte_check.parquet",
                 "byte_layers.png", "report.md"):  # fmt: skip
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "Bytes per token received, by layer" in report
    assert "Kernel byte counts against our packet capture" in report
