"""Charts of the TLS and HTTP/2 experiments: bytes per token by layer, and per-stream tails
under loss for multiplexed and separate connections.

Each function reads a stored run and writes one PNG into it; the tables come from
`analysis.layers` and `analysis.hol`, the same code the facts and the report use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from analysis.layers import byte_layers
from presentation.charts import RunLike, as_run, figure, save, transport_order

if TYPE_CHECKING:
    import pandas as pd

# bottom to top, as the bytes nest on the wire
LAYERS = (
    ("payload_per_token", "token text", "#4c72b0"),
    ("transport_per_token", "transport framing", "#55a868"),
    ("http_per_token", "HTTP framing", "#c44e52"),
    ("tls_records_per_token", "TLS records", "#8172b2"),
    ("tls_setup_per_token", "TLS handshake (per token)", "#ccb974"),
)


def _layer_rows(streams: pd.DataFrame) -> pd.DataFrame:
    rows = byte_layers(streams, ["condition", "transport"])
    conns = rows["connections"].astype(float)
    rows["tls_setup_per_token"] = rows["tls_setup_per_conn"].fillna(0) * conns / rows["tokens"]
    return rows[rows["tokens"] > 0]


def byte_layers_chart(run_dir: RunLike) -> list[Path]:
    """`byte_layers.png`: stacked bytes per token received, one panel per condition; the
    bar's top is the layers' sum, the tick the kernel's TCP count (they meet when every
    byte read was accounted for)."""
    run = as_run(run_dir)
    streams = run.streams[~run.streams["condition"].str.contains("cut", na=False)]
    rows = _layer_rows(streams)
    if rows.empty:
        return []
    conditions = list(dict.fromkeys(rows["condition"]))
    fig, axes = figure(len(conditions), width_in=4.6, height_in=3.6)
    for ax, condition in zip(axes, conditions, strict=True):
        part = rows[rows["condition"] == condition].set_index("transport")
        order = [t for t in transport_order(part.index) if t in part.index]
        part = part.loc[order]
        bottom = [0.0] * len(order)
        for column, name, colour in LAYERS:
            values = part[column].fillna(0).clip(lower=0).tolist()
            ax.bar(order, values, bottom=bottom, color=colour, label=name, width=0.7)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.scatter(order, part["tcp_per_token"], marker="_", s=300, color="black",
                   label="TCP payload (kernel)", zorder=3)  # fmt: skip
        ax.set(title=condition, ylabel="bytes per token received")
        ax.tick_params(axis="x", labelrotation=45)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Bytes per token by layer, each counted (tick: the kernel's TCP count)")
    return [save(fig, run.path / "byte_layers.png")]


def hol_chart(run_dir: RunLike) -> list[Path]:
    """`hol.png`: against the loss, per arm (and transport), the per-stream latency p99
    (median over the streams, solid) and the longest gap (dashed) in one panel; in the
    other, the share of the other streams held with each late token (solid) and silent
    through each stall (dashed), from the run's `hol` table (analysis/hol.py)."""
    run = as_run(run_dir)
    hol = run.extra.get("hol")
    if hol is None or hol.empty:
        return []
    fig, (ax_ms, ax_co) = figure(2, width_in=5.6, height_in=4.0)
    styles = {"2": ("o", "#c44e52"), "1.1": ("s", "#4c72b0")}
    for (transport, arm, http), rows in hol.groupby(["transport", "arm", "http"], sort=False):
        rows = rows.sort_values("loss_pct")
        marker, shade = styles.get(str(http), ("^", "#55a868"))
        name = f"{arm} ({transport})" if hol["transport"].nunique() > 1 else str(arm)
        ax_ms.plot(rows["loss_pct"], rows["stream_p99_ms_median"], "-", marker=marker,
                   color=shade, label=f"{name}: p99")  # fmt: skip
        ax_ms.plot(rows["loss_pct"], rows["gap_max_ms"], "--", marker=marker, color=shade,
                   label=f"{name}: longest gap")  # fmt: skip
        ax_co.plot(rows["loss_pct"], rows["co_held"], "-", marker=marker, color=shade,
                   label=f"{name}: held with a late token")  # fmt: skip
        ax_co.plot(rows["loss_pct"], rows["co_stalled"], "--", marker=marker, color=shade,
                   label=f"{name}: silent through a stall")  # fmt: skip
    ax_ms.set(xlabel="packet loss (%)", ylabel="ms", yscale="log",
              title="Per-stream latency p99 (median over streams) and longest gap")  # fmt: skip
    ax_co.set(xlabel="packet loss (%)", ylabel="share of the other streams", ylim=(-0.05, 1.05),
              title="Shared by the other streams (no point: nothing late or stalled)")  # fmt: skip
    ax_ms.legend(fontsize=7)
    ax_co.legend(fontsize=7)
    return [save(fig, run.path / "hol.png")]


def h2_byte_layers_chart(run_dir: RunLike) -> list[Path]:
    """`byte_layers.png` of the http2 experiment: its per-path streams only (not the
    concurrency sweep, whose shared connections are the `h2_concurrency` chart's)."""
    import dataclasses

    run = as_run(run_dir)
    paths = run.streams[run.streams["sweep"] != "streams"]
    return byte_layers_chart(dataclasses.replace(run, streams=paths))


def h2_concurrency_chart(run_dir: RunLike) -> list[Path]:
    """`h2_concurrency.png`: against N streams from one client (log x), the connections they
    used and the slowest first token, one line per front and HTTP version; the dotted line is
    the front's SETTINGS_MAX_CONCURRENT_STREAMS, beyond which HTTP/2 streams wait."""
    run = as_run(run_dir)
    conc = run.extra.get("h2_concurrency")
    if conc is None or conc.empty:
        return []
    fig, (ax_conn, ax_ttft) = figure(2, width_in=5.0, height_in=3.8)
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    styles = {"nginx": ("#009639", "o", 7), "caddy": ("#1f88c0", "s", 4)}  # both visible
    for (front, http), rows in conc.groupby(["front", conc["http"].astype(str)], sort=False):
        rows = rows.sort_values("n")
        colour, marker, size = styles.get(str(front), ("grey", "^", 5))
        line = "-" if http == "2" else "--"
        style = {"color": colour, "marker": marker, "markersize": size, "linestyle": line,
                 "label": f"{front} HTTP/{http}"}  # fmt: skip
        ax_conn.plot(rows["n"], rows["connections"], **style)  # type: ignore[arg-type]
        ax_ttft.plot(rows["n"], rows["ttft_max_ms"], **style)  # type: ignore[arg-type]
    settings = run.extra.get("h2_settings")
    for row in [] if settings is None else settings.itertuples():
        limit = float(row.max_concurrent_streams)
        if limit <= conc["n"].max():
            ax_ttft.axvline(limit, color=styles.get(str(row.front), ("grey",))[0], linestyle=":",
                            label=f"{row.front} SETTINGS_MAX_CONCURRENT_STREAMS")  # fmt: skip
    ns = sorted(set(conc["n"]))
    for ax in (ax_conn, ax_ttft):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("concurrent streams from one client (N)")
    ax_conn.set(yscale="log", ylabel="connections used", title="Connections used")
    ax_conn.yaxis.set_major_formatter(ScalarFormatter())
    ax_ttft.set(ylabel="slowest first token (ms)", title="Slowest first token")
    ax_conn.legend(fontsize=7)
    ax_ttft.legend(fontsize=7)
    fig.suptitle("N SSE streams from one client: HTTP/1.1 (N connections) and HTTP/2 (one)")
    return [save(fig, run.path / "h2_concurrency.png")]
