"""Charts and summary tables for the experiments beyond `latency`: sweeps over the network
(rtt, loss), reconnects under cuts, cancellation. Read stored runs only; draw nothing live.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import stats
from presentation.charts import (
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

    from records.store import StoredRun

CAPTIONS: dict[str, str] = {
    "idle.png": "Server memory per idle connection",
    "scale.png": "Latency, CPU and memory against concurrent streams",
    "arrival_spread.png": "How tokens arrive through each proxy mode",
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
    """`reconnect.png`: per condition, recovery time, lost and duplicated tokens, completion."""
    run = _as_run(run_dir)
    summary = reconnect_summary(run.streams)
    conditions = list(dict.fromkeys(summary["condition"]))
    fig, axes = _figure(3 * len(conditions), width_in=4.6, height_in=3.6)
    for i, condition in enumerate(conditions):
        part = summary[summary["condition"] == condition]
        order = transport_order(part["transport"])
        rows = part.set_index("transport").loc[order]
        colours = [colour(t) for t in order]
        ax_rec, ax_loss, ax_done = axes[3 * i : 3 * i + 3]
        ax_rec.bar(order, rows["recovery_max_ms"].fillna(0), color=colours)
        ax_rec.set(title=f"{condition}\nlongest recovery: cut -> next new token", ylabel="ms")
        ax_rec.set_ylim(
            bottom=0, top=max(1.0, float(rows["recovery_max_ms"].max(skipna=True) or 0) * 1.1)
        )
        ax_loss.bar(order, rows["lost"], color=colours)
        ax_loss.bar(
            order, rows["duplicated"], bottom=rows["lost"], color=colours, hatch="//", alpha=0.6
        )
        ax_loss.set(title="tokens lost (solid), duplicated (hatched)", ylabel="tokens, all streams")
        ax_done.bar(order, rows["completed"] / rows["streams"], color=colours)
        ax_done.set(title="streams completed", ylabel="fraction", ylim=(0, 1.05))
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.25)
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


def arrival_spread_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per stream: (last read - first read) / (last emit - first emit); 1 streamed, 0 burst."""
    firsts = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    per = firsts.groupby(["condition", "transport", "stream_id"], sort=False).agg(
        recv_first=("t_recv_ns", "min"),
        recv_last=("t_recv_ns", "max"),
        emit_first=("t_emit_ns", "min"),
        emit_last=("t_emit_ns", "max"),
    )
    emitted = (per["emit_last"] - per["emit_first"]).where(lambda s: s > 0)
    per["arrival_spread"] = (per["recv_last"] - per["recv_first"]) / emitted
    return per.reset_index()[["condition", "transport", "stream_id", "arrival_spread"]]


def proxy_summary(run: StoredRun) -> pd.DataFrame:
    """Per condition (proxy mode) and transport: TTFT p50, spread median, completion."""
    spread = arrival_spread_table(run.tokens)
    streams = run.streams.merge(spread, on=["condition", "transport", "stream_id"], how="left")
    out = streams.groupby(["condition", "transport"], sort=False).agg(
        streams=("stream_id", "size"),
        completed=("error", lambda e: int((e == "").sum())),
        ttft_p50_ms=("ttft_ms", "median"),
        e2e_p50_ms=("e2e_ms", "median"),
        arrival_spread=("arrival_spread", "median"),
    )
    return out.reset_index()


def arrival_spread(run_dir: RunLike) -> list[Path]:
    """`arrival_spread.png`: per proxy mode, arrival spread and TTFT per transport."""
    run = _as_run(run_dir)
    summary = proxy_summary(run)
    modes = list(dict.fromkeys(summary["condition"]))
    fig, axes = _figure(len(modes), width_in=4.4, height_in=3.6)
    for ax, mode in zip(axes, modes, strict=True):
        rows = summary[summary["condition"] == mode]
        order = transport_order(rows["transport"])
        rows = rows.set_index("transport").loc[order]
        bars = ax.bar(order, rows["arrival_spread"].fillna(0), color=[colour(t) for t in order])
        for bar, ttft_ms in zip(bars, rows["ttft_p50_ms"], strict=True):
            ax.annotate(
                f"{ttft_ms:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set(title=mode, ylabel="arrival spread (1 = as generated)", ylim=(0, 1.2))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle("Streamed (1) or one burst (0): arrival spread per transport; labels: TTFT p50 ms")
    return [_save(fig, run.path / "arrival_spread.png")]


def scale(run_dir: RunLike) -> list[Path]:
    """`scale.png`: p50/p99 latency, server CPU per token and memory per connection vs N."""
    run = _as_run(run_dir)
    if "scale" not in run.extra:
        return []
    df = run.extra["scale"]
    fig, (ax_lat, ax_cpu, ax_mem) = _figure(3, width_in=4.8, height_in=3.8)
    for transport in transport_order(df["transport"]):
        rows = df[df["transport"] == transport].sort_values("n")
        c = colour(transport)
        ax_lat.plot(
            rows["n"],
            rows["latency_p50_ms"].clip(lower=LATENCY_FLOOR_MS),
            "-o",
            color=c,
            markersize=4,
            label=transport,
        )
        ax_lat.plot(
            rows["n"],
            rows["latency_p99_ms"].clip(lower=LATENCY_FLOOR_MS),
            "--s",
            color=c,
            markersize=4,
        )
        ax_cpu.plot(
            rows["n"], rows["server_cpu_per_token_us"], "-o", color=c, markersize=4, label=transport
        )
        ax_mem.plot(
            rows["n"],
            rows["server_rss_per_conn_bytes"] / 1024,
            "-o",
            color=c,
            markersize=4,
            label=transport,
        )
    target = float(df["target_p99_ms"].iloc[0]) if "target_p99_ms" in df else None
    if target:
        ax_lat.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax_lat.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent streams",
        ylabel="token latency (ms)",
        title="p50 (solid), p99 (dashed); dotted: target",
    )
    ax_cpu.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="server CPU per token (us)",
        title="Server CPU per token delivered",
    )
    ax_mem.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="KiB per connection",
        title="Server memory per connection (peak RSS)",
    )
    for ax in (ax_lat, ax_cpu, ax_mem):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    return [_save(fig, run.path / "scale.png")]


def scale_summary(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    from experiments.scale import capacity

    df = run.extra["scale"]
    cols = [
        "transport",
        "n",
        "delivered_ratio",
        "errors",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "e2e_ratio_max",
        "server_cpu_per_token_us",
        "server_rss_per_conn_bytes",
        "loop_lag_max_ms",
        "fleet_cpu_max_fraction",
        "fleet_saturated",
    ]
    target = float(df["target_p99_ms"].iloc[0])
    return [
        ("Scale: per transport and N", df[[c for c in cols if c in df]]),
        (
            f"Capacity: largest N with every token delivered and p99 < {target:g} ms",
            capacity(df, target),
        ),
    ]


def idle(run_dir: RunLike) -> list[Path]:
    """`idle.png`: server memory per idle connection, per transport."""
    run = _as_run(run_dir)
    if "idle" not in run.extra:
        return []
    df = run.extra["idle"]
    largest = df[df["n"] == df["n"].max()]
    order = transport_order(largest["transport"])
    rows = largest.set_index("transport").loc[order]
    fig, (ax,) = _figure(1, width_in=6.0, height_in=3.8)
    bars = ax.bar(order, rows["rss_per_conn_bytes"] / 1024, color=[colour(t) for t in order])
    for bar, value in zip(bars, rows["rss_per_conn_bytes"] / 1024, strict=True):
        ax.annotate(
            f"{value:.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set(
        ylabel="KiB per idle connection (server RSS)",
        title=f"Server memory per idle connection, n={int(df['n'].max())}",
    )
    ax.grid(True, axis="y", alpha=0.25)
    return [_save(fig, run.path / "idle.png")]


def _browser_connections(run_dir: RunLike) -> list[Path]:
    from experiments.browser_connections import connections_chart

    return connections_chart(run_dir)


CHARTS: dict[str, list[Callable[[RunLike], list[Path]]]] = {
    "browser-connections": [_browser_connections],
    "idle": [idle],
    "scale": [scale],
    "proxy": [arrival_spread],
    "idle-timeout": [reconnect],
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
    if experiment in ("reconnect", "idle-timeout"):
        return [("Reconnect summary", reconnect_summary(run.streams))]
    if experiment == "relay" and "relay" in run.extra:
        title = "Relay: latency each transport adds to the model's stream, beside the model's gaps"
        return [(title, run.extra["relay"])]
    if experiment == "idle" and "idle" in run.extra:
        return [("Idle connections: server memory", run.extra["idle"].drop(columns=["run_id"]))]
    if experiment == "scale" and "scale" in run.extra:
        return scale_summary(run)
    if experiment == "proxy":
        tables = [("Proxy summary (medians per stream)", proxy_summary(run))]
        if "nginx" in run.extra:
            tables.append(("nginx in the path (requests in its access log)", run.extra["nginx"]))
        return tables
    if experiment == "cancel" and "cancel" in run.extra:
        return [("Cancel summary (medians per stream)", cancel_summary(run.extra["cancel"]))]
    return []
