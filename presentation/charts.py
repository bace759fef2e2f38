"""Charts of one stored run: each function reads a run directory and writes PNGs into it.

Presentation only: the numbers come from `store.load` and `stats`, the same code the report
uses, never from a live measurement. matplotlib is imported inside the functions and drives an
Agg canvas directly (no pyplot, no global backend switch). Every chart colours a transport the
same way (`colour`), and a run with several conditions gets one panel per condition.
"""

from __future__ import annotations

import math
import textwrap
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis import stats
from records import store
from transports import registry

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#e7ba52")
PANEL_KEYS = ["condition", "rate_hz"]
LATENCY_FLOOR_MS = 1e-3  # the log axis cannot show 0; smaller latencies are drawn here
_SOLID: dict[str, Any] = {"alpha": 0.95}  # first bar of a pair
_HATCHED: dict[str, Any] = {"alpha": 0.45, "hatch": "//"}  # second bar of a pair

RunLike = Path | str | store.StoredRun


def colour(transport: str) -> str:
    """The transport's colour in every chart (its registry entry's); unknown keys get a stable
    (hash-picked) fallback."""
    known = registry.TRANSPORTS.get(transport)
    if known is not None:
        return known.colour
    return FALLBACK_COLOURS[zlib.crc32(transport.encode()) % len(FALLBACK_COLOURS)]


def transport_order(names: Iterable[str]) -> list[str]:
    """Known transports in the registry's display order, then any others alphabetically."""
    present = set(names)
    known = [t.key for t in registry.ordered() if t.key in present]
    return known + sorted(present - set(known))


def draw_all(run_dir: RunLike) -> list[Path]:
    """Draw every chart that the run's data supports; return the PNG paths written."""
    run = as_run(run_dir)
    drawers: list[Callable[[RunLike], list[Path]]] = [
        latency_cdf,
        ttft,
        bytes_per_token,
        latency_vs_rate,
        itl,
        requests_per_stream,
    ]
    return [path for draw in drawers for path in draw(run)]


def latency_cdf(run_dir: RunLike) -> list[Path]:
    """`latency_cdf.png`: empirical CDF of token latency per transport, one panel per condition."""
    run = as_run(run_dir)
    tokens = run.tokens.dropna(subset=["latency_ms"])
    if tokens.empty:
        return []
    panels = _panels(tokens)
    fig, axes = figure(len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        for transport in transport_order(rows["transport"]):
            values = rows.loc[rows["transport"] == transport, "latency_ms"].to_numpy(float)
            xs, ys = _ecdf_points(values)
            label = f"{transport} (n={values.size:,})"
            ax.step(
                np.maximum(xs, LATENCY_FLOOR_MS),
                ys,
                where="post",
                color=colour(transport),
                label=label,
                linewidth=1.6,
            )
        for level in (0.5, 0.99):
            ax.axhline(level, color="0.6", linestyle=":", linewidth=0.8)
            ax.annotate(
                f"p{level * 100:g}",
                (0.005, level),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=7,
                color="0.4",
            )
        ax.set_xscale("log")
        ax.set(title=title, xlabel="token latency (ms, log scale)", ylabel="fraction of tokens ≤ x")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Token latency CDF (client receive − server emit, wall clock, same host)")
    return [save(fig, run.path / "latency_cdf.png")]


def ttft(run_dir: RunLike) -> list[Path]:
    """`ttft.png`: time to first token, p50 and p99 over streams per transport."""
    run = as_run(run_dir)
    summary = stats.summarize(run.streams, [*PANEL_KEYS, "transport"], "ttft_ms")
    summary = summary[summary["count"] > 0]
    if summary.empty:
        return []
    panels = _panels(summary)
    fig, axes = figure(len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        _paired_bars(ax, rows, "ttft_ms_p50", "ttft_ms_p99", ("p50", "p99"), note="streams")
        ax.set(title=title, ylabel="TTFT (ms)")
    fig.suptitle(
        "Time to first token per transport: p50 and p99 over streams "
        "(request sent → first token, monotonic clock)"
    )
    return [save(fig, run.path / "ttft.png")]


def bytes_per_token(run_dir: RunLike) -> list[Path]:
    """`bytes_per_token.png`: bytes down per token split into payload and overhead, and up."""
    run = as_run(run_dir)
    costs = stats.byte_costs(run.streams, [*PANEL_KEYS, "transport"])
    costs = costs[costs["tokens"] > 0]
    if costs.empty:
        return []
    panels = _panels(costs)
    fig, axes = figure(len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        _byte_bars(ax, rows)
        ax.set(title=title, ylabel="bytes per token received")
    sources = set(run.streams["bytes_source"].dropna())
    source = "kernel TCP_INFO" if sources == {"kernel"} else "/".join(sorted(sources)) + " counts"
    fig.suptitle(f"Bytes per token ({source}, all connections); ×N = bytes down / payload")
    return [save(fig, run.path / "bytes_per_token.png")]


def latency_vs_rate(run_dir: RunLike) -> list[Path]:
    """`latency_vs_rate.png`: token latency p50/p99 against the generation rate (several rates)."""
    run = as_run(run_dir)
    tokens = run.tokens.dropna(subset=["latency_ms", "rate_hz"])
    if tokens["rate_hz"].nunique() < 2:
        return []
    summary = stats.summarize(tokens, ["transport", "rate_hz"], "latency_ms")
    fig, (ax,) = figure(1, width_in=7.5, height_in=4.8)
    for transport in transport_order(summary["transport"]):
        rows = summary[summary["transport"] == transport].sort_values("rate_hz")
        for column, style, marker in (("latency_ms_p50", "-", "o"), ("latency_ms_p99", "--", "s")):
            ax.plot(
                rows["rate_hz"],
                rows[column].clip(lower=LATENCY_FLOOR_MS),
                linestyle=style,
                marker=marker,
                color=colour(transport),
                markersize=4,
            )
    rates = summary["rate_hz"]
    if rates.min() > 0 and rates.max() / rates.min() >= 10:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="generation rate (tokens/s)", ylabel="token latency (ms, log scale)")
    ax.grid(True, which="both", alpha=0.25)
    handles = _legend_handles(summary["transport"], ("p50", "p99"), lines=True)
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    pooled = run.tokens["condition"].nunique() > tokens["rate_hz"].nunique()
    ax.set_title(
        "Token latency vs rate: p50 (solid), p99 (dashed)"
        + (", pooled over other conditions" if pooled else "")
    )
    return [save(fig, run.path / "latency_vs_rate.png")]


def itl(run_dir: RunLike) -> list[Path]:
    """`itl.png`: inter-token arrival gap p50/p99 per transport, pooled over all gaps.

    Source: the tokens table (t_recv_ns differences within each stream, see
    `stats.token_gaps_ms`), because a pooled percentile of every gap is a true p99, whereas a
    median of the streams' own p99s is not.
    """
    run = as_run(run_dir)
    gaps = stats.token_gaps_ms(run.tokens, [*PANEL_KEYS, "transport"])
    summary = stats.summarize(gaps, [*PANEL_KEYS, "transport"], "gap_ms")
    if summary.empty:
        return []
    panels = _panels(summary)
    fig, axes = figure(len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        _paired_bars(ax, rows, "gap_ms_p50", "gap_ms_p99", ("p50", "p99"), note="gaps")
        rate_hz = float(rows["rate_hz"].iloc[0])
        if rate_hz > 0:
            ax.axhline(1000 / rate_hz, color="0.3", linestyle=":", linewidth=1)
            ax.annotate(
                f"generation gap {1000 / rate_hz:g} ms",
                (0.99, 1000 / rate_hz),
                xycoords=("axes fraction", "data"),
                va="bottom",
                ha="right",
                fontsize=7,
                color="0.3",
            )
        ax.set(title=title, ylabel="gap between token arrivals (ms)")
    fig.suptitle(
        "Inter-token gap: p50 and p99 pooled over all arrival gaps "
        "(tokens table: t_recv diffs within each stream)"
    )
    return [save(fig, run.path / "itl.png")]


def requests_per_stream(run_dir: RunLike) -> list[Path]:
    """`requests_per_stream.png`: median HTTP requests and connections per stream."""
    run = as_run(run_dir)
    if run.streams.empty:
        return []
    summary = (
        run.streams.groupby([*PANEL_KEYS, "transport"], sort=True, observed=True)
        .agg(
            http=("http_requests", "median"),
            conns=("connections", "median"),
            count=("stream_id", "size"),
        )
        .reset_index()
    )
    panels = _panels(summary)
    fig, axes = figure(len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        _paired_bars(
            ax,
            rows,
            "http",
            "conns",
            ("HTTP requests", "connections"),
            note="streams",
            value_labels=True,
        )
        top = float(rows[["http", "conns"]].max().max())
        if top >= 20:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.5, top=top * 6)
        ax.set(title=title, ylabel="per stream (median)")
    fig.suptitle("HTTP requests and TCP connections per stream (median over streams)")
    return [save(fig, run.path / "requests_per_stream.png")]


# --- helpers -------------------------------------------------------------------------------


def as_run(run: RunLike) -> store.StoredRun:
    return run if isinstance(run, store.StoredRun) else store.load(Path(run))


def _panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per condition, ordered by rate then label."""
    out = []
    for (condition, rate_hz), rows in df.groupby(PANEL_KEYS, sort=True, dropna=False):
        label = str(condition) if isinstance(condition, str) and condition else ""
        out.append((rate_hz, label or f"rate={rate_hz:g} tokens/s", rows))
    out.sort(key=lambda item: (math.inf if math.isnan(item[0]) else item[0], item[1]))
    return [(title, rows) for _, title, rows in out]


def figure(
    n_panels: int, width_in: float = 5.2, height_in: float = 3.8
) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width_in * ncols, height_in * nrows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.flat)
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def save(fig: Figure, path: Path) -> Path:
    """Write the PNG, its titles first wrapped to the width they have (never cropped)."""
    wrap_titles(fig)
    fig.savefig(path, dpi=DPI)
    return path


def wrap_titles(fig: Figure) -> None:
    """Break the figure's title and each panel's title into lines that fit their width:
    constrained layout makes room for more lines, but never for a line wider than the figure."""
    width_in = float(fig.get_figwidth())
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib keeps no public getter for the Text
    if suptitle is not None and suptitle.get_text():
        suptitle.set_text(_wrapped(suptitle.get_text(), width_in, float(suptitle.get_fontsize())))
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        ncols = spec.get_gridspec().ncols if spec is not None else 1
        title = ax.title
        if title.get_text():
            title.set_text(
                _wrapped(title.get_text(), width_in / ncols, float(title.get_fontsize()))
            )


def _wrapped(text: str, width_in: float, fontsize: float) -> str:
    # an average character of the default sans-serif is about 0.55 em wide
    chars = max(12, int(width_in * 72 * 0.92 / (fontsize * 0.55)))
    return "\n".join(
        textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False)
        for line in text.split("\n")
    )


def _ecdf_points(values: np.ndarray, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Exact points of the empirical CDF, thinned for large inputs but keeping the tail."""
    xs = np.sort(values)
    n = xs.size
    if n <= max_points:
        idx = np.arange(n)
    else:
        probs = np.concatenate([np.linspace(0, 1, max_points // 2), 1 - np.logspace(-7, -1, 500)])
        idx = np.unique(np.clip(np.round(probs * (n - 1)).astype(int), 0, n - 1))
    return xs[idx], (idx + 1) / n


def _paired_bars(
    ax: Axes,
    rows: pd.DataFrame,
    first: str,
    second: str,
    labels: Sequence[str],
    note: str,
    value_labels: bool = False,
) -> None:
    """Two bars per transport (solid `first`, hatched `second`); the count goes under the name."""
    order = transport_order(rows["transport"])
    counts = {}
    for i, transport in enumerate(order):
        row = rows[rows["transport"] == transport].iloc[0]
        c = colour(transport)
        for offset, column, look in ((-0.2, first, _SOLID), (0.2, second, _HATCHED)):
            bars = ax.bar(i + offset, row[column], width=0.4, color=c, edgecolor=c, **look)
            if value_labels:
                ax.bar_label(bars, fmt="%g", fontsize=7, padding=1)
        counts[transport] = int(row["count"])
    _count_ticks(ax, order, counts, note)
    top = float(np.nanmax(rows[[first, second]].to_numpy(float), initial=0.0))
    ax.set_ylim(0, top * 1.35 if top > 0 else 1)  # headroom for the legend
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(handles=_legend_handles([], labels), fontsize=8, loc="upper left")


def _count_ticks(ax: Axes, order: Sequence[str], counts: dict[str, int], note: str) -> None:
    """Transport names as ticks, each with its sample size; one size shared by all is said
    once in the panel's corner instead (per tick it repeated and overlapped its neighbours)."""
    sizes = set(counts.values())
    if len(sizes) == 1:
        ax.set_xticks(range(len(order)), order, fontsize=8, rotation=30, ha="right")
        ax.annotate(
            f"n={sizes.pop():,} {note} each",
            (0.99, 0.98),
            xycoords="axes fraction",
            ha="right",
            va="top",
            fontsize=7,
            color="0.35",
        )
        return
    ticks = [f"{t}\nn={counts[t]:,}" for t in order]
    ax.set_xticks(range(len(order)), ticks, fontsize=7.5, rotation=30, ha="right")
    ax.set_xlabel(f"n = {note} per transport", fontsize=8)


def _byte_bars(ax: Axes, rows: pd.DataFrame) -> None:
    order = transport_order(rows["transport"])
    for i, transport in enumerate(order):
        row = rows[rows["transport"] == transport].iloc[0]
        c = colour(transport)
        payload, overhead = row["payload_per_token_bytes"], row["overhead_per_token_bytes"]
        ax.bar(i - 0.2, payload, width=0.4, color=c, edgecolor=c)
        ax.bar(i - 0.2, overhead, width=0.4, bottom=payload, color=c, edgecolor=c, alpha=0.35)
        ax.bar(
            i + 0.2,
            row["up_per_token_bytes"],
            width=0.4,
            facecolor="white",
            edgecolor=c,
            hatch="xx",
        )
        ax.annotate(
            f"×{row['overhead_ratio']:.1f}",
            (i - 0.2, payload + overhead),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(order)), order, fontsize=8)
    ax.margins(y=0.3)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(handles=_byte_legend(), fontsize=7, loc="upper left")


def _legend_handles(transports: Iterable[str], styles: Sequence[str], lines: bool = False) -> list:
    """Legend entries: one per transport colour, then one per bar or line style (in grey)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=colour(t), label=t) for t in transport_order(transports)]
    if lines:
        handles += [
            Line2D([], [], color="0.3", linestyle="-", marker="o", label=styles[0]),
            Line2D([], [], color="0.3", linestyle="--", marker="s", label=styles[1]),
        ]
    else:
        looks = (_SOLID, _HATCHED)
        handles += [
            Patch(facecolor="0.4", edgecolor="0.4", label=label, **look)
            for label, look in zip(styles, looks, strict=False)
        ]
    return handles


def _byte_legend() -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor="0.35", label="down: payload (token text)"),
        Patch(facecolor="0.35", alpha=0.35, label="down: overhead (framing, headers)"),
        Patch(facecolor="white", edgecolor="0.35", hatch="xx", label="up (requests)"),
    ]
