"""Charts of how tokens arrive over time: through each proxy mode (`token_arrival`) and
relayed from a model's stream (`relay`).

Like `charts_net`, each function reads a stored run and writes one PNG into it; which
experiment draws which is declared by the experiment's descriptor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from presentation.charts import (
    LATENCY_FLOOR_MS,
    RunLike,
    as_run,
    colour,
    figure,
    save,
    transport_order,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def token_arrival(run_dir: RunLike) -> list[Path]:
    """`token_arrival.png`: tokens received against time since the stream's first emit, one
    panel per mode (condition), one line per transport (its first stream), the emission in
    grey: a proxy that holds the stream shows as a flat line, then a step."""
    run = as_run(run_dir)
    tokens = run.tokens.dropna(subset=["t_recv_ns", "t_emit_ns"])
    if tokens.empty:
        return []
    modes = list(dict.fromkeys(tokens["condition"]))  # in the order they were measured
    fig, axes = figure(len(modes), width_in=4.6, height_in=3.6)
    for ax, mode in zip(axes, modes, strict=True):
        rows = tokens[tokens["condition"] == mode]
        for i, transport in enumerate(transport_order(rows["transport"])):
            mine = rows[rows["transport"] == transport]
            one = mine[mine["stream_id"] == sorted(mine["stream_id"])[0]]
            one = one.sort_values("t_recv_ns").drop_duplicates("seq")
            t0 = one["t_emit_ns"].min()
            if i == 0:
                emitted = np.sort(one["t_emit_ns"].to_numpy()) - t0
                ax.step(
                    emitted / 1e6,
                    np.arange(1, emitted.size + 1),
                    where="post",
                    color="0.6",
                    linewidth=4,
                    alpha=0.4,
                    label="emitted",
                )
            received = (one["t_recv_ns"].to_numpy() - t0) / 1e6
            ax.step(
                received,
                np.arange(1, received.size + 1),
                where="post",
                color=colour(transport),
                linewidth=1.4,
                label=transport,
            )
        ax.set(
            title=mode,
            xlabel="ms since the stream's first token was emitted",
            ylabel="tokens received",
        )
        ax.grid(True, alpha=0.25)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Token arrival over time, one stream per transport (grey: as generated; "
        "a flat line then a step is a proxy holding the stream)"
    )
    return [save(fig, run.path / "token_arrival.png")]


def relay(run_dir: RunLike) -> list[Path]:
    """`relay.png`: per condition, the latency each transport adds to the model's stream (p50,
    p99) beside the model's own gaps between tokens."""
    run = as_run(run_dir)
    table = run.extra.get("relay")
    if table is None or table.empty:
        return []
    conditions = list(dict.fromkeys(table["condition"]))
    fig, axes = figure(len(conditions), width_in=5.6, height_in=3.9)
    for ax, condition in zip(axes, conditions, strict=True):
        rows = table[table["condition"] == condition]
        order = transport_order(rows["transport"])
        _relay_panel(ax, rows.set_index("transport").loc[order], order)
        ax.set(title=str(condition), ylabel="ms (log scale)")
    fig.suptitle(
        "Latency each transport adds to the model's stream (relay receive -> client receive), "
        "beside the model's own gaps between tokens"
    )
    return [save(fig, run.path / "relay.png")]


# (offset, column, alpha, hatch): p50 solid on the left, p99 hatched on the right
_RELAY_BARS = ((-0.2, "added_latency_p50_ms", 0.95, ""), (0.2, "added_latency_p99_ms", 0.45, "//"))


def _relay_panel(ax: Axes, rows: pd.DataFrame, order: list[str]) -> None:
    """Solid p50 and hatched p99 bars per transport; the model's gaps as grey lines."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    for i, transport in enumerate(order):
        c = colour(transport)
        row = rows.loc[transport]
        for offset, column, alpha, hatch in _RELAY_BARS:
            value = max(float(row[column]), LATENCY_FLOOR_MS)
            ax.bar(i + offset, value, width=0.4, color=c, edgecolor=c, alpha=alpha, hatch=hatch)
    for column, style in (("model_gap_p50_ms", "-"), ("model_gap_p99_ms", "--")):
        ax.axhline(float(rows[column].median()), color="0.35", linestyle=style, linewidth=1)
    ax.set_yscale("log")
    top = float(rows[["added_latency_p99_ms", "model_gap_p99_ms"]].max().max())
    ax.set_ylim(top=max(top, LATENCY_FLOOR_MS) * 30)  # headroom: the legend goes above the bars
    ax.set_xticks(range(len(order)), order, fontsize=8, rotation=30, ha="right")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    ax.legend(
        handles=[
            Patch(facecolor="0.4", label="added, p50"),
            Patch(facecolor="0.4", alpha=0.45, hatch="//", label="added, p99"),
            Line2D([], [], color="0.35", label="model's gap, p50"),
            Line2D([], [], color="0.35", linestyle="--", label="model's gap, p99"),
        ],
        fontsize=7,
        loc="upper left",
        ncols=2,
    )
