"""Charts and summary tables for the experiments beyond `latency`: sweeps over the network
(rtt, loss), reconnects under cuts, cancellation. Read stored runs only; draw nothing live.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from experiments import stats
from experiments.charts import (
    LATENCY_FLOOR_MS,
    RunLike,
    _as_run,
    _figure,
    _save,
    colour,
    transport_order,
)

if TYPE_CHECKING:
    import pandas as pd

    from experiments.store import StoredRun

CAPTIONS: dict[str, str] = {
    "latency_vs_sweep.png": "Token latency and TTFT across the sweep",
    "reconnect.png": "Recovery from repeated connection cuts",
    "cancel.png": "Generation after the client walked away",
}


def latency_vs_sweep(run_dir: RunLike) -> list[Path]:
    """`latency_vs_sweep.png`: p50/p99 token latency and TTFT p50 against a non-rate sweep."""
    run = _as_run(run_dir)
    tokens = run.tokens.dropna(subset=["latency_ms"])
    if tokens.empty or tokens["sweep"].iloc[0] == "rate_hz" or tokens["sweep_value"].nunique() < 2:
        return []
    name = str(tokens["sweep"].iloc[0])
    lat = stats.summarize(tokens, ["transport", "sweep_value"], "latency_ms")
    ttft = stats.summarize(run.streams, ["transport", "sweep_value"], "ttft_ms")
    fig, (ax_lat, ax_ttft) = _figure(2, width_in=6.0, height_in=4.4)
    for transport in transport_order(lat["transport"]):
        rows = lat[lat["transport"] == transport].sort_values("sweep_value")
        for column, style in (("latency_ms_p50", "-"), ("latency_ms_p99", "--")):
            ax_lat.plot(
                rows["sweep_value"],
                rows[column].clip(lower=LATENCY_FLOOR_MS),
                style,
                marker="o",
                markersize=4,
                color=colour(transport),
                label=transport if style == "-" else None,
            )
        trows = ttft[ttft["transport"] == transport].sort_values("sweep_value")
        ax_ttft.plot(
            trows["sweep_value"],
            trows["ttft_ms_p50"],
            "-",
            marker="o",
            markersize=4,
            color=colour(transport),
            label=transport,
        )
    ax_lat.set(
        xlabel=name,
        ylabel="token latency (ms, log)",
        yscale="log",
        title="Token latency: p50 (solid), p99 (dashed)",
    )
    ax_ttft.set(xlabel=name, ylabel="TTFT p50 (ms)", title="Time to first token, p50")
    for ax in (ax_lat, ax_ttft):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    return [_save(fig, run.path / "latency_vs_sweep.png")]


def reconnect_summary(streams: pd.DataFrame) -> pd.DataFrame:
    """Per transport and condition: completion, reconnects, recovery, gaps, loss, duplicates."""
    groups = streams.groupby(["transport", "condition"], sort=False)
    out = groups.agg(
        streams=("stream_id", "size"),
        completed=("error", lambda e: int((e == "").sum())),
        reconnects_median=("reconnects", "median"),
        recovery_max_ms=("recovery_max_ms", "max"),
        gap_max_ms=("gap_max_ms", "max"),
        lost=("lost", "sum"),
        duplicated=("duplicated", "sum"),
        tcp_connections_median=("tcp_connections", "median"),
    ).reset_index()
    return out


def reconnect(run_dir: RunLike) -> list[Path]:
    """`reconnect.png`: recovery time, longest silence, lost and duplicated tokens per transport."""
    run = _as_run(run_dir)
    summary = reconnect_summary(run.streams)
    fig, axes = _figure(3, width_in=4.6, height_in=3.8)
    order = transport_order(summary["transport"])
    rows = summary.set_index("transport").loc[order]
    colours = [colour(t) for t in order]
    axes[0].bar(order, rows["recovery_max_ms"].fillna(0), color=colours)
    axes[0].set(title="Longest recovery: cut -> next new token", ylabel="ms")
    axes[1].bar(order, rows["lost"], color=colours, label="lost")
    axes[1].bar(
        order,
        rows["duplicated"],
        bottom=rows["lost"],
        color=colours,
        hatch="//",
        alpha=0.6,
        label="duplicated",
    )
    axes[1].set(title="Tokens lost (solid) and duplicated (hatched)", ylabel="tokens, all streams")
    axes[2].bar(order, rows["completed"] / rows["streams"], color=colours)
    axes[2].set(title="Streams completed", ylabel="fraction", ylim=(0, 1.05))
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle(f"Reconnect: {', '.join(sorted(set(run.streams['condition'])))}")
    return [_save(fig, run.path / "reconnect.png")]


def cancel_summary(cancel: pd.DataFrame) -> pd.DataFrame:
    """Per transport, way of leaving and server policy: tokens nobody read, time to stop."""
    out = cancel.groupby(["policy", "how", "transport"], sort=False).agg(
        streams=("stream_id", "size"),
        tokens_read=("tokens_read", "median"),
        wasted_tokens=("wasted_tokens", "median"),
        stop_ms=("stop_ms", "median"),
        server_reason=("server_reason", lambda r: ",".join(sorted(set(map(str, r))))),
    )
    return out.reset_index()


def cancel(run_dir: RunLike) -> list[Path]:
    """`cancel.png`: tokens generated for nobody, per transport, per way of leaving and policy."""
    run = _as_run(run_dir)
    if "cancel" not in run.extra:
        return []
    summary = cancel_summary(run.extra["cancel"])
    variants = list(dict.fromkeys(zip(summary["policy"], summary["how"], strict=True)))
    fig, axes = _figure(len(variants), width_in=4.4, height_in=3.6)
    top = max(1.0, float(summary["wasted_tokens"].max()) * 1.15)
    for ax, (policy, how) in zip(axes, variants, strict=True):
        rows = summary[(summary["policy"] == policy) & (summary["how"] == how)]
        order = transport_order(rows["transport"])
        rows = rows.set_index("transport").loc[order]
        bars = ax.bar(order, rows["wasted_tokens"], color=[colour(t) for t in order])
        for bar, stop_ms in zip(bars, rows["stop_ms"], strict=True):
            ax.annotate(
                f"{stop_ms:.0f} ms" if stop_ms >= 0 else "ended before",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set(
            title=f"{how}, server policy {policy}",
            ylabel="tokens generated, never read",
            ylim=(0, top),
        )
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle("After the client leaves: wasted tokens (bars), time to stop (labels)")
    return [_save(fig, run.path / "cancel.png")]


CHARTS: dict[str, list[Callable[[RunLike], list[Path]]]] = {
    "rtt": [latency_vs_sweep],
    "loss": [latency_vs_sweep],
    "reconnect": [reconnect],
    "cancel": [cancel],
}


def draw_for(run: StoredRun) -> list[Path]:
    """The experiment's own charts, if it has any."""
    return [p for fn in CHARTS.get(str(run.meta.get("experiment")), []) for p in fn(run)]


def summaries(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    """Experiment-specific summary tables for the report."""
    experiment = run.meta.get("experiment")
    if experiment == "reconnect":
        return [("Reconnect summary", reconnect_summary(run.streams))]
    if experiment == "cancel" and "cancel" in run.extra:
        return [("Cancel summary (medians per stream)", cancel_summary(run.extra["cancel"]))]
    return []
