"""Chart of the `http3` experiment: first token per HTTP version and transport, one panel per
round-trip time, from the same table its report shows (analysis/http3.py `summary`)."""

from __future__ import annotations

from pathlib import Path

from analysis.http3 import summary
from presentation.charts import RunLike, as_run, figure, save, transport_order

_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")


def ttft_chart(run_dir: RunLike) -> list[Path]:
    """`http3_ttft.png`: TTFT p50 bars, grouped by transport, one bar per HTTP version (and
    QUIC controller), one panel per RTT; the dashed lines mark whole round trips."""
    run = as_run(run_dir)
    points = run.extra.get("http3_points")
    if points is None or points.empty:
        return []
    table = summary(run.streams, run.tokens, points)
    if table.empty:
        return []
    rtts = sorted(table["rtt_ms"].unique())
    labels = list(dict.fromkeys(table["stack_label"]))
    fig, axes = figure(len(rtts), width_in=5.6, height_in=3.8)
    for ax, rtt in zip(axes, rtts, strict=True):
        part = table[table["rtt_ms"] == rtt]
        order = [t for t in transport_order(part["transport"].unique())]
        width = 0.8 / len(labels)
        for i, name in enumerate(labels):
            rows = part[part["stack_label"] == name].set_index("transport")
            xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(order))]
            values = [float(rows.loc[t, "ttft_p50_ms"]) if t in rows.index else 0.0
                      for t in order]  # fmt: skip
            ax.bar(xs, values, width=width, label=name, color=_COLOURS[i % len(_COLOURS)])
        if rtt > 0:
            for k in range(1, 6):
                ax.axhline(k * rtt, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xticks(range(len(order)), order, rotation=45)
        ax.set(title=f"RTT {rtt:g} ms", ylabel="first token p50 (ms)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("First token by HTTP version (dotted: whole round trips)")
    return [save(fig, run.path / "http3_ttft.png")]
