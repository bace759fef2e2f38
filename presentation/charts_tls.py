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
