"""Result store, metadata, statistics, charts and report, on synthetic schema-valid tables."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis import stats
from presentation import charts
from presentation import markdown as report
from records import meta, store
from records.schema import (
    ADDED_IN_5,
    SCHEMA_VERSION,
    STREAM_COLUMNS,
    TOKEN_COLUMNS,
    Tables,
    conform,
)
from transports import registry

TRANSPORTS = ("sse", "websocket", "longpoll")
RATES_HZ = (10.0, 50.0)
T0_NS = 1_790_000_000_000_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STARTED_AT = datetime(2026, 11, 21, 14, 35, 1, tzinfo=UTC)


def _keys(transport: str, rate_hz: float, stream_id: str) -> dict[str, object]:
    return {
        "run_id": "test-run",
        "experiment": "synthetic",
        "transport": transport,
        "client": "python",
        "condition": f"rate={rate_hz:g} text=en",
        "sweep": "rate_hz",
        "sweep_value": rate_hz,
        "rate_hz": rate_hz,
        "corpus": "en",
        "stream_id": stream_id,
    }


def _stream_row(keys: dict[str, object], **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        **keys, "envelope": "text", "tokens_expected": 0, "tokens_received": 0, "lost": 0,
        "duplicated": 0, "out_of_order": 0, "ttft_ms": math.nan, "itl_p50_ms": math.nan,
        "itl_p99_ms": math.nan, "e2e_ms": math.nan, "reconnects": 0, "http_requests": 1,
        "connections": 1, "stack": "tcp", "bytes_up": 0, "bytes_down": 0, "app_bytes_up": 0,
        "app_bytes_down": 0, "bytes_source": "kernel", "payload_bytes": 0, "packets_up": -1,
        "packets_down": -1, "retransmits": -1, "gap_max_ms": math.nan, "recovery_max_ms": math.nan,
        "continuations": 0, "continuation_gap_max_ms": math.nan,
        "end_reason": "done", "error": "",
        **ADDED_IN_5,  # what a cleartext HTTP/1.1 stream that counted no layers has
    }  # fmt: skip
    row.update(values)
    return row


def _token_rows(
    keys: dict[str, object], recv_ms: list[float], latency_ms: list[float], text_bytes: list[int]
) -> list[dict[str, object]]:
    rows = []
    for seq, (recv, lat, size) in enumerate(zip(recv_ms, latency_ms, text_bytes, strict=True)):
        t_recv_ns = T0_NS + int(recv * 1e6)
        rows.append(
            {
                **keys,
                "seq": seq,
                "text_bytes": size,
                "t_emit_ns": t_recv_ns - int(lat * 1e6),
                "t_recv_ns": t_recv_ns,
                "latency_ms": lat,
                "connection": 0,
            }
        )
    return rows


def _tables(token_rows: list[dict[str, object]], stream_rows: list[dict[str, object]]) -> Tables:
    return Tables(
        tokens=conform(pd.DataFrame(token_rows, columns=list(TOKEN_COLUMNS)), TOKEN_COLUMNS),
        streams=conform(pd.DataFrame(stream_rows, columns=list(STREAM_COLUMNS)), STREAM_COLUMNS),
    )


def make_tables(seed: int = 7, streams_each: int = 3, tokens_each: int = 40) -> Tables:
    """Three transports x two rates x a few streams, with plausible seeded numbers."""
    rng = np.random.default_rng(seed)
    token_rows: list[dict[str, object]] = []
    stream_rows: list[dict[str, object]] = []
    for t_index, transport in enumerate(TRANSPORTS):
        for rate_hz in RATES_HZ:
            for k in range(streams_each):
                keys = _keys(transport, rate_hz, f"{transport}-{rate_hz:g}-{k}")
                recv_ms = list(np.arange(tokens_each) * 1000 / rate_hz + rng.uniform(0, 2))
                latency = list(rng.lognormal(np.log(1.5 + 10 * t_index), 0.6, tokens_each))
                sizes = [int(s) for s in rng.integers(1, 9, tokens_each)]
                token_rows += _token_rows(keys, recv_ms, latency, sizes)
                payload = sum(sizes)
                stream_rows.append(
                    _stream_row(
                        keys,
                        tokens_expected=tokens_each,
                        tokens_received=tokens_each,
                        ttft_ms=float(rng.uniform(5, 60)),
                        e2e_ms=recv_ms[-1] + 5,
                        http_requests=1 + 12 * (transport == "longpoll"),
                        bytes_up=150 + 90 * k,
                        bytes_down=payload + 40 * tokens_each * (t_index + 1),
                        payload_bytes=payload,
                    )
                )
    return _tables(token_rows, stream_rows)


def tiny_tables(sse_ttft_ms: float = 10.0) -> Tables:
    """Hand-sized run: sse with two streams (one failed), websocket with one; one condition."""
    sse_a, sse_b, ws = (
        _keys(t, 20.0, s) for t, s in (("sse", "a"), ("sse", "b"), ("websocket", "c"))
    )
    tokens = (
        _token_rows(sse_a, [0, 10, 30], [1, 2, 3], [10, 10, 10])
        + _token_rows(sse_b, [0, 40], [4, 5], [10, 10])
        + _token_rows(ws, [0, 50], [7, 9], [5, 5])
    )
    streams = [
        _stream_row(
            sse_a,
            tokens_expected=3,
            tokens_received=3,
            ttft_ms=sse_ttft_ms,
            bytes_up=100,
            bytes_down=300,
            payload_bytes=30,
            http_requests=1,
        ),
        _stream_row(
            sse_b,
            tokens_expected=3,
            tokens_received=2,
            lost=1,
            ttft_ms=30.0,
            bytes_up=300,
            bytes_down=200,
            payload_bytes=20,
            http_requests=3,
            connections=2,
            reconnects=1,
            error="timeout",
        ),
        _stream_row(
            ws,
            tokens_expected=2,
            tokens_received=2,
            ttft_ms=8.0,
            bytes_up=50,
            bytes_down=40,
            payload_bytes=10,
            bytes_source="app",
        ),
    ]
    return _tables(tokens, streams)


def fake_meta(run_id: str = "test-run") -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meta, "_git", lambda repo, *args: "0" * 40 if "rev-parse" in args else "")
        return meta.collect_meta("synthetic", {"rates_hz": list(RATES_HZ)}, run_id, STARTED_AT)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return store.save(make_tables(), fake_meta(), tmp_path_factory.mktemp("run") / "r1")


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    yield store.save(tiny_tables(), fake_meta("tiny-run"), tmp_path / "tiny")


# --- store and meta ------------------------------------------------------------------------


def test_round_trip_preserves_dtypes_and_values(run_dir: Path) -> None:
    tables = make_tables()
    loaded = store.load(run_dir)
    pd.testing.assert_frame_equal(loaded.tokens, tables.tokens)
    pd.testing.assert_frame_equal(loaded.streams, tables.streams)
    assert dict(loaded.streams.dtypes.astype(str)) == {
        c: str(pd.Series(dtype=t).dtype) for c, t in STREAM_COLUMNS.items()
    }
    rows = {f["name"]: f["rows"] for f in loaded.meta["files"]}
    assert rows == {
        "tokens.csv": len(tables.tokens),
        "tokens.parquet": len(tables.tokens),
        "streams.csv": len(tables.streams),
        "streams.parquet": len(tables.streams),
    }
    assert loaded.path == run_dir


def test_kept_text_files_round_trip_and_are_listed(tmp_path: Path) -> None:
    conf = "http {\n    proxy_http_version 1.0;\n}\n"
    tables = dataclasses.replace(tiny_tables(), files={"nginx-buffered-http1.0.conf": conf})
    loaded = store.load(store.save(tables, fake_meta(), tmp_path / "with-files"))
    assert loaded.files == {"nginx-buffered-http1.0.conf": conf}
    assert (loaded.path / "nginx-buffered-http1.0.conf").read_text() == conf
    listed = [f for f in loaded.meta["files"] if f["format"] == "text"]
    assert listed == [
        {"name": "nginx-buffered-http1.0.conf", "table": "", "format": "text", "chars": len(conf)}
    ]
    assert loaded.extra == {}  # a text file is not an extra table
    assert store.load(store.save(tiny_tables(), fake_meta(), tmp_path / "none")).files == {}


@pytest.mark.parametrize("name", ["meta.json", "tokens.csv", "../x.conf", "a/b.conf", "x.png"])
def test_a_kept_file_may_not_take_a_runs_own_name(tmp_path: Path, name: str) -> None:
    tables = dataclasses.replace(tiny_tables(), files={name: "text"})
    with pytest.raises(ValueError, match="text file name"):
        store.save(tables, fake_meta(), tmp_path / "bad")


def test_csv_fallback_reads_the_same_tables(tmp_path: Path) -> None:
    tables = tiny_tables()
    streams = tables.streams.copy()
    streams.loc[2, "ttft_ms"] = math.nan  # NaN floats and empty strings survive the CSV
    out = store.save(Tables(tables.tokens, streams), fake_meta(), tmp_path / "csv")
    for name in ("tokens.parquet", "streams.parquet"):
        (out / name).unlink()
    loaded = store.load(out)
    pd.testing.assert_frame_equal(loaded.tokens, tables.tokens)
    pd.testing.assert_frame_equal(loaded.streams, streams)


@pytest.mark.parametrize("missing", ["meta.json", "tokens", "streams"])
def test_load_names_the_missing_file(tiny_dir: Path, missing: str) -> None:
    names = [missing] if missing.endswith(".json") else [f"{missing}.parquet", f"{missing}.csv"]
    for name in names:
        (tiny_dir / name).unlink()
    with pytest.raises(ValueError, match=re.escape(names[0])):
        store.load(tiny_dir)


def test_load_refuses_a_newer_schema(tiny_dir: Path) -> None:
    meta_path = tiny_dir / "meta.json"
    data = json.loads(meta_path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    meta_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"meta\.json.*newer"):
        store.load(tiny_dir)


def test_results_root_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(store.RESULTS_ENV, raising=False)
    assert store.results_root() == Path(store.__file__).resolve().parents[1] / "results"
    monkeypatch.setenv(store.RESULTS_ENV, str(tmp_path))
    assert store.results_root() == tmp_path


def test_meta_has_required_keys_and_is_json() -> None:
    data = fake_meta()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    for key in (
        "schema_version",
        "pushlab_version",
        "git_commit",
        "git_dirty",
        "python",
        "packages",
        "machine",
        "spec",
        "started_at",
        "run_id",
    ):
        assert key in data, key
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["git_commit"] == "0" * 40 and data["git_dirty"] is False
    assert data["started_at"] == "2026-11-21T14:35:01+00:00"
    assert set(data["packages"]) >= {
        "aiohttp",
        "websockets",
        "h11",
        "pandas",
        "pyarrow",
        "matplotlib",
        "uvloop",
    }
    assert data["packages"]["pandas"] == pd.__version__
    assert {
        "hostname",
        "cpu_count",
        "cpu_model",
        "memory_total_bytes",
        "kernel",
        "platform",
    } <= set(data["machine"])
    assert data["spec"] == {"rates_hz": list(RATES_HZ)}


def test_meta_outside_a_git_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta, "_git", lambda repo, *args: None)
    data = meta.collect_meta("x", {"path": Path("/tmp")}, "id", STARTED_AT)
    assert (data["git_commit"], data["git_dirty"]) == ("unknown", False)
    assert data["spec"] == {"path": "/tmp"}


def test_new_run_id_is_utc_named_and_suffixed() -> None:
    run_id = meta.new_run_id("latency", STARTED_AT, rng=random.Random(1))
    assert re.fullmatch(r"20261121-143501-latency-[0-9a-f]{4}", run_id)
    assert len({meta.new_run_id("latency", STARTED_AT) for _ in range(20)}) > 1


# --- statistics ----------------------------------------------------------------------------


def test_percentiles_of_a_known_array() -> None:
    values = [*range(1, 101), math.nan]
    assert stats.percentiles(values) == pytest.approx(
        {"count": 100, "p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0}
    )
    empty = stats.percentiles([])
    assert empty["count"] == 0 and all(math.isnan(empty[k]) for k in ("p50", "p99", "max"))


def test_summarize_one_row_per_group() -> None:
    df = pd.DataFrame({"t": ["a", "a", "a", "b"], "x": [1.0, 2.0, 3.0, math.nan]})
    out = stats.summarize(df, ["t"], "x")
    assert list(out.columns) == ["t", "count", "x_p50", "x_p90", "x_p99", "x_max"]
    assert out["count"].tolist() == [3, 0]
    assert out.loc[0, "x_p50"] == 2.0 and math.isnan(out.loc[1, "x_p50"])


# --- charts --------------------------------------------------------------------------------


@pytest.mark.slow
def test_draw_all_writes_real_pngs(run_dir: Path) -> None:
    paths = charts.draw_all(run_dir)
    assert {p.name for p in paths} == {
        "latency_cdf.png",
        "ttft.png",
        "bytes_per_token.png",
        "latency_vs_rate.png",
        "itl.png",
        "requests_per_stream.png",
    }
    for path in paths:
        assert path.parent == run_dir and path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_one_rate_skips_latency_vs_rate(tiny_dir: Path) -> None:
    names = {p.name for p in charts.draw_all(tiny_dir)}
    assert "latency_vs_rate.png" not in names and "latency_cdf.png" in names


def test_colours_are_fixed_per_transport() -> None:
    colours = {t.key: t.colour for t in registry.TRANSPORTS.values()}
    assert charts.colour("sse") == colours["sse"]
    assert charts.colour("browser-sse") == charts.colour("browser-sse")
    assert charts.colour("browser-sse") not in colours.values()
    order = [t.key for t in registry.ordered()]
    assert charts.transport_order(["zz", *reversed(order)]) == [*order, "zz"]


# --- report --------------------------------------------------------------------------------


def test_headline_equals_hand_computed_values() -> None:
    tables = tiny_tables()
    table = report.headline(tables.streams, tables.tokens).set_index("transport")
    sse, ws = table.loc["sse"], table.loc["websocket"]
    expected_sse = {
        "streams": 2, "ttft_p50_ms": 20.0, "ttft_p99_ms": 29.8, "tokens": 5,
        "latency_p50_ms": 3.0, "latency_p90_ms": 4.6, "latency_p99_ms": 4.96,
        "latency_max_ms": 5.0, "itl_gaps": 3, "itl_p50_ms": 20.0, "itl_p99_ms": 39.6,
        "down_per_token_bytes": 100.0, "overhead_ratio": 10.0, "up_per_stream_bytes": 200.0,
        "http_requests_per_stream": 2.0, "connections_per_stream": 1.5, "lost": 1,
        "duplicated": 0, "errors": 1,
    }  # fmt: skip
    assert sse.to_dict() == pytest.approx(expected_sse)
    got_ws = (ws["streams"], ws["tokens"], ws["latency_p50_ms"], ws["itl_p50_ms"])
    assert got_ws == (1, 2, 8.0, 50.0)
    assert ws["overhead_ratio"] == pytest.approx(4.0) and ws["errors"] == 0
    assert list(table.index) == ["sse", "websocket"]


def test_headline_splits_conditions_when_several(run_dir: Path) -> None:
    loaded = store.load(run_dir)
    table = report.headline(loaded.streams, loaded.tokens)
    assert len(table) == len(TRANSPORTS) * len(RATES_HZ)
    assert {"condition", "rate_hz"} <= set(table.columns)
    assert table["tokens"].sum() == len(loaded.tokens)


def test_report_holds_headline_values_and_image_links(tiny_dir: Path) -> None:
    charts.draw_all(tiny_dir)  # drawn once, by whoever stores the run; the report links them
    text = report.write_markdown(tiny_dir).read_text()
    assert "# synthetic: run tiny-run" in text
    for value in ("29.8", "4.96", "39.6", "| sse |", "0" * 40, '"rates_hz"'):
        assert value in text, value
    for name in ("latency_cdf.png", "ttft.png", "bytes_per_token.png", "itl.png"):
        assert f"]({name})" in text and (tiny_dir / name).is_file()
    assert "latency_vs_rate.png" not in text
    assert "2 of 3 streams have kernel counts" in text


def test_changing_an_input_changes_the_headline(tmp_path: Path) -> None:
    tables = tiny_tables(sse_ttft_ms=50.0)
    table = report.headline(tables.streams, tables.tokens).set_index("transport")
    assert table.loc["sse", "ttft_p50_ms"] == pytest.approx(40.0)
    out = store.save(tables, fake_meta(), tmp_path / "changed")
    text = report.write_markdown(out).read_text()
    assert "| sse | 2 | 40 | 49.8 |" in text
    assert "No charts drawn" in text


def test_format_value_and_markdown_table() -> None:
    assert [report.format_value(v) for v in (3, 2.0, 4.96, 123.456, math.nan, "a|b")] == [
        "3",
        "2",
        "4.96",
        "123.5",
        "n/a",
        "a\\|b",
    ]
    df = pd.DataFrame({"name": ["x"], "n": [1]})
    assert report.markdown_table(df) == "| name | n |\n| --- | ---: |\n| x | 1 |"
