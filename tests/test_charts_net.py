"""The charts experiments declare (presentation/charts_net.py, charts_arrival.py) and the
legibility rules every chart follows, on synthetic stored runs: what each panel draws, not
only that a PNG exists."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments.catalog import EXPERIMENTS
from presentation import charts, charts_arrival, charts_net
from records import store
from records.schema import Tables
from tests.test_store_charts import (
    PNG_MAGIC,
    T0_NS,
    _keys,
    _stream_row,
    _tables,
    fake_meta,
    tiny_tables,
)


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the chart modules save (each still written as a PNG), to read them."""
    figures: list[Any] = []

    def keep(fig: Any, path: Path) -> Path:
        figures.append(fig)
        return charts.save(fig, path)

    monkeypatch.setattr(charts_net, "save", keep)
    monkeypatch.setattr(charts_arrival, "save", keep)
    return figures


def stored(tmp_path: Path, tables: Tables, name: str = "run") -> store.StoredRun:
    return store.load(store.save(tables, fake_meta(), tmp_path / name))


def proxy_tables() -> Tables:
    """Two modes: directly every token as emitted; through a holding proxy, all at the end."""
    tokens, streams = [], []
    for mode_index, mode in enumerate(("direct", "nginx buffered-http1.0")):
        for transport in ("sse", "websocket"):
            keys = {**_keys(transport, 20.0, f"{mode}-{transport}"), "condition": mode,
                    "sweep": "mode", "sweep_value": float(mode_index)}  # fmt: skip
            held = mode != "direct" and transport == "sse"
            for seq in range(1, 6):
                emit = T0_NS + seq * 50_000_000
                recv = T0_NS + 300_000_000 if held else emit + 1_000_000
                tokens.append({**keys, "seq": seq, "text_bytes": 3, "t_emit_ns": emit,
                               "t_recv_ns": recv, "latency_ms": (recv - emit) / 1e6,
                               "connection": 0})  # fmt: skip
            streams.append(_stream_row(keys, tokens_expected=5, tokens_received=5, ttft_ms=5.0))
    return _tables(tokens, streams)


def test_token_arrival_draws_a_panel_per_mode_and_the_burst(
    tmp_path: Path, drawn: list[Any]
) -> None:
    (path,) = charts_arrival.token_arrival(stored(tmp_path, proxy_tables()))
    assert path.name == "token_arrival.png" and path.read_bytes()[:8] == PNG_MAGIC
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["direct", "nginx buffered-http1.0"]
    for ax in axes:  # the emission, then one line per transport, each ending at 5 tokens
        assert [line.get_label() for line in ax.get_lines()] == ["emitted", "sse", "websocket"]
        assert all(line.get_ydata()[-1] == 5 for line in ax.get_lines())
    held = axes[1].get_lines()[1].get_xdata()
    assert set(held) == {250.0}  # every token read at once, 250 ms after the first emit
    streamed = axes[0].get_lines()[1].get_xdata()
    assert list(streamed) == [1.0, 51.0, 101.0, 151.0, 201.0]


def relay_table() -> pd.DataFrame:
    rows = []
    for condition in ("relayed", "relayed, continued every 6 tokens"):
        for transport, p50, p99 in (("sse", 0.4, 3.0), ("shortpoll", 50.0, 90.0)):
            rows.append({"condition": condition, "transport": transport, "tokens": 12,
                         "added_latency_p50_ms": p50, "added_latency_p99_ms": p99,
                         "model_gap_p50_ms": 16.0, "model_gap_p99_ms": 24.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_relay_chart_sets_added_latency_beside_the_models_gaps(
    tmp_path: Path, drawn: list[Any]
) -> None:
    tables = Tables(tiny_tables().tokens, tiny_tables().streams, extra={"relay": relay_table()})
    (path,) = charts_arrival.relay(stored(tmp_path, tables))
    assert path.name == "relay.png"
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["relayed", "relayed, continued every 6 tokens"]
    heights = [bar.get_height() for bar in axes[0].patches]
    assert heights == pytest.approx([0.4, 3.0, 50.0, 90.0])  # p50, p99 per transport
    gaps = sorted(line.get_ydata()[0] for line in axes[0].get_lines())
    assert gaps == [16.0, 24.0]
    assert charts_arrival.relay(stored(tmp_path, tiny_tables(), "norelay")) == []


def scale_table() -> pd.DataFrame:
    """One transport at three N: the smallest used 5 ms of CPU and under a page per stream."""
    return pd.DataFrame(
        {
            "transport": ["sse"] * 3,
            "n": [10, 100, 1000],
            "latency_p50_ms": [0.5, 0.6, 2.0],
            "latency_p99_ms": [1.0, 2.0, 9.0],
            "server_cpu_s": [0.005, 0.2, 1.5],
            "server_cpu_per_token_us": [50.0, 20.0, 15.0],
            "server_rss_per_conn_bytes": [800.0, 9000.0, 8000.0],
            "target_p99_ms": [100.0] * 3,
        }
    )


def test_scale_marks_points_below_measurement_resolution(tmp_path: Path, drawn: list[Any]) -> None:
    tables = Tables(tiny_tables().tokens, tiny_tables().streams, extra={"scale": scale_table()})
    charts_net.scale(stored(tmp_path, tables))
    _, ax_cpu, ax_mem = drawn[0].axes
    for ax in (ax_cpu, ax_mem):
        joined, hollow = ax.get_lines()
        assert list(joined.get_xdata()) == [100, 1000]  # no trend drawn through n=10
        assert list(hollow.get_xdata()) == [10] and hollow.get_linestyle() == "None"
        assert hollow.get_markerfacecolor() == "none"
    assert "hollow" in ax_cpu.get_title() and "hollow" in ax_mem.get_title()


def test_one_sample_size_is_said_once_not_under_every_tick(tiny_dir_equal: Path) -> None:
    fig_axes: list[Any] = []
    original = charts.save

    def keep(fig: Any, path: Path) -> Path:
        fig_axes.extend(fig.axes)
        return original(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(charts, "save", keep)
        charts.ttft(tiny_dir_equal)
    (ax,) = fig_axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["sse", "websocket"]
    assert "n=1 streams each" in [t.get_text() for t in ax.texts]


@pytest.fixture()
def tiny_dir_equal(tmp_path: Path) -> Path:
    tables = tiny_tables()
    one_each = tables.streams[tables.streams["stream_id"] != "b"]
    return store.save(Tables(tables.tokens, one_each), fake_meta(), tmp_path / "equal")


def test_long_titles_are_wrapped_to_the_figures_width(tmp_path: Path) -> None:
    fig, (ax,) = charts.figure(1, width_in=4.0)
    long = "Token latency and time to first token " * 4
    fig.suptitle(long)
    ax.set_title(long)
    charts.save(fig, tmp_path / "wrapped.png")
    for text in (fig.get_suptitle(), ax.get_title()):
        lines = text.split("\n")
        assert len(lines) >= 3
        # the 4-inch figure holds ~45 characters at 12 pt; nothing longer survives
        assert max(map(len, lines)) <= math.ceil(4.0 * 72 * 0.92 / (12 * 0.55))
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)  # type: ignore[attr-defined]
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # inside the PNG, not cropped


def test_only_the_latency_experiment_draws_the_generic_charts(tmp_path: Path) -> None:
    generic = {name for name, e in EXPERIMENTS.items() if e.generic_charts}
    assert generic == {"latency"}
    run = stored(tmp_path, tiny_tables())
    for experiment in EXPERIMENTS.values():
        names = {p.name for p in experiment.draw(run)}
        assert ("latency_cdf.png" in names) == (experiment.name == "latency"), experiment.name
