"""Charts of particular experiments' tables: sweeps over the network (rtt, loss), reconnects
under cuts, cancellation, proxy arrival spread, scale, idle memory, browser connections.

Each function reads a stored run and writes one PNG into it; which experiment uses which is
declared by the experiment (its descriptor), never here. The tables they draw come from
`analysis.derived`, the same code the facts and the report use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from analysis import stats
from analysis.derived import (
    cancel_summary,
    proxy_summary,
    reconnect_summary,
)
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

CLOCK_TICK_S = 0.01  # /proc CPU times count in clock ticks of 10 ms (USER_HZ = 100)
CPU_RESOLVED_TICKS = 10  # under 10 ticks a CPU delta is known to +-10 % or worse
PAGE_BYTES = 4096  # RSS moves in pages: less than one per connection is not a measurement


def latency_vs_sweep(run_dir: RunLike) -> list[Path]:
    """`latency_vs_sweep.png`: p50/p99 token latency and TTFT p50 against a non-rate sweep."""
    run = as_run(run_dir)
    tokens = run.tokens.dropna(subset=["latency_ms"])
    if tokens.empty or tokens["sweep"].iloc[0] == "rate_hz" or tokens["sweep_value"].nunique() < 2:
        return []
    name = str(tokens["sweep"].iloc[0])
    lat = stats.summarize(tokens, ["transport", "sweep_value"], "latency_ms")
    ttft = stats.summarize(run.streams, ["transport", "sweep_value"], "ttft_ms")
    fig, (ax_lat, ax_ttft) = figure(2, width_in=6.0, height_in=4.4)
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
    return [save(fig, run.path / "latency_vs_sweep.png")]


def reconnect(run_dir: RunLike) -> list[Path]:
    """`reconnect.png`: per condition, recovery time, lost and duplicated tokens, completion."""
    run = as_run(run_dir)
    summary = reconnect_summary(run.streams)
    conditions = list(dict.fromkeys(summary["condition"]))
    recovery_top = max(1.0, float(summary["recovery_max_ms"].max(skipna=True) or 0) * 1.1)
    fig, axes = figure(3 * len(conditions), width_in=4.6, height_in=3.6)
    for i, condition in enumerate(conditions):
        part = summary[summary["condition"] == condition]
        order = transport_order(part["transport"])
        rows = part.set_index("transport").loc[order]
        colours = [colour(t) for t in order]
        ax_rec, ax_loss, ax_done = axes[3 * i : 3 * i + 3]
        ax_rec.bar(order, rows["recovery_max_ms"].fillna(0), color=colours)
        # the setting on a line of its own: it is what the two rows differ by
        head = str(condition).replace(", retry:", "\nretry:")
        ax_rec.set(title=f"{head}\nlongest recovery: cut -> next new token", ylabel="ms")
        # one scale for every condition: the settings compared read as bar heights
        ax_rec.set_ylim(bottom=0, top=recovery_top)
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
    fig.suptitle("Connections cut: recovery, tokens lost or duplicated, streams completed")
    return [save(fig, run.path / "reconnect.png")]


def cancel(run_dir: RunLike) -> list[Path]:
    """`cancel.png`: tokens generated for nobody, per transport, per way of leaving and policy."""
    run = as_run(run_dir)
    if "cancel" not in run.extra:
        return []
    summary = cancel_summary(run.extra["cancel"])
    variants = list(dict.fromkeys(zip(summary["policy"], summary["how"], strict=True)))
    fig, axes = figure(len(variants), width_in=4.4, height_in=3.6)
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
    return [save(fig, run.path / "cancel.png")]


def arrival_spread(run_dir: RunLike) -> list[Path]:
    """`arrival_spread.png`: per proxy mode, arrival spread and TTFT per transport."""
    run = as_run(run_dir)
    summary = proxy_summary(run)
    modes = list(dict.fromkeys(summary["condition"]))
    fig, axes = figure(len(modes), width_in=4.4, height_in=3.6)
    # polling can read later than generated (spread above 1): keep its bar and label in view
    top = max(1.2, float(summary["arrival_spread"].max(skipna=True) or 0) * 1.15)
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
        ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
        ax.set(title=mode, ylabel="arrival spread (1 = as generated)", ylim=(0, top))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle("Streamed (1) or one burst (0): arrival spread per transport; labels: TTFT p50 ms")
    return [save(fig, run.path / "arrival_spread.png")]


def scale(run_dir: RunLike) -> list[Path]:
    """`scale.png`: p50/p99 latency, server CPU per token and memory per connection vs N."""
    run = as_run(run_dir)
    if "scale" not in run.extra:
        return []
    df = run.extra["scale"]
    fig, (ax_lat, ax_cpu, ax_mem) = figure(3, width_in=4.8, height_in=3.8)
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
        cpu_ok = rows["server_cpu_s"] >= CPU_RESOLVED_TICKS * CLOCK_TICK_S
        _resolved_line(ax_cpu, rows["n"], rows["server_cpu_per_token_us"], cpu_ok, c, transport)
        mem_ok = rows["server_rss_per_conn_bytes"] >= PAGE_BYTES
        _resolved_line(
            ax_mem, rows["n"], rows["server_rss_per_conn_bytes"] / 1024, mem_ok, c, transport
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
        title=f"Server CPU per token delivered; hollow: under "
        f"{CPU_RESOLVED_TICKS * CLOCK_TICK_S * 1e3:g} ms of CPU in all ({CPU_RESOLVED_TICKS} "
        "/proc ticks), too coarse to read",
    )
    ax_mem.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="KiB per connection",
        title="Server memory per connection (peak RSS); hollow: under one 4 KiB page per "
        "connection, below RSS's resolution",
    )
    for ax in (ax_lat, ax_cpu, ax_mem):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    return [save(fig, run.path / "scale.png")]


def _resolved_line(
    ax: Axes, xs: pd.Series, ys: pd.Series, resolved: pd.Series, c: str, label: str
) -> None:
    """Resolved points joined by a line; the others hollow and unjoined, so no trend is drawn
    through values that are the measurement's resolution rather than the server's."""
    ax.plot(xs[resolved], ys[resolved], "-o", color=c, markersize=4, label=label)
    if (~resolved).any():
        ax.plot(
            xs[~resolved],
            ys[~resolved].clip(lower=0),
            "o",
            markerfacecolor="none",
            color=c,
            markersize=5,
            label=None if resolved.any() else label,
        )


def idle(run_dir: RunLike) -> list[Path]:
    """`idle.png`: server memory per idle connection, per transport."""
    run = as_run(run_dir)
    if "idle" not in run.extra:
        return []
    df = run.extra["idle"]
    largest = df[df["n"] == df["n"].max()]
    order = transport_order(largest["transport"])
    rows = largest.set_index("transport").loc[order]
    fig, (ax,) = figure(1, width_in=6.0, height_in=3.8)
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
    return [save(fig, run.path / "idle.png")]


def connections_chart(run_dir: RunLike) -> list[Path]:
    """`browser_connections.png`: one panel per path (HTTP/1.1, each HTTP/2 front), each
    stream of each n in start order, the transports side by side: in time or stalled.
    Runs stored before paths existed (no `path` column) were HTTP/1.1 only."""
    run = as_run(run_dir)
    table = run.extra.get("connections")
    if table is None or table.empty:
        return []
    if "path" not in table:
        table = table.assign(path="http1.1")
    paths = list(dict.fromkeys(table["path"]))
    transports = transport_order(t.removeprefix("browser-") for t in table["transport"].unique())
    fig, axes = figure(len(paths), width_in=5.4, height_in=4.4)
    deadline = float(table["deadline_ms"].iloc[0])
    for ax, path in zip(axes, paths, strict=True):
        rows = table[table["path"] == path]
        _connections_panel(ax, rows, transports, deadline)
        used = [
            f"{t}: {int(u)}"
            for t in transports
            if "connections_used" in rows
            and len(sel := rows[rows["transport"] == f"browser-{t}"])
            and (u := sel[sel["n_open"] == sel["n_open"].max()]["connections_used"].max()) >= 0
        ]
        top = int(rows["n_open"].max())
        ax.set_title(f"{path}" + (f" (connections at n={top}: {', '.join(used)})" if used else ""))
    fig.suptitle("Which streams got their first token in time (one Chromium tab, one origin)")
    return [save(fig, run.path / "browser_connections.png")]


def _connections_panel(
    ax: Axes, rows: pd.DataFrame, transports: list[str], deadline_ms: float
) -> None:
    """One path's streams: x is n (each transport a little apart), y the stream's index."""
    width = 0.36 / max(len(transports) - 1, 1)
    for i, transport in enumerate(transports):
        sel = rows[rows["transport"] == f"browser-{transport}"]
        dx = (i - (len(transports) - 1) / 2) * width
        ok, stalled = sel[~sel["stalled"].astype(bool)], sel[sel["stalled"].astype(bool)]
        ax.scatter(ok["n_open"] + dx, ok["index"] + 1, s=40, color=colour(transport),
                   label=f"{transport}: first token in time" if len(ok) else None)  # fmt: skip
        ax.scatter(stalled["n_open"] + dx, stalled["index"] + 1, marker="X", s=70,
                   color="#d62728", edgecolors=colour(transport), linewidths=0.8)  # fmt: skip
    late = rows[rows["stalled"].astype(bool)]["ttft_ms"]
    if len(late):  # their first tokens' times in the legend: labels by each point would crowd
        came, never = late.dropna(), int(late.isna().sum())
        span = list(dict.fromkeys(f"{t / 1e3:.1f}" for t in (came.min(), came.max())))
        when = f"; came at {'-'.join(span)} s" if len(came) else ""
        label = f"stalled: no first token within {deadline_ms:g} ms{when}"
        ax.scatter([], [], marker="X", s=70, color="#d62728",
                   label=label + (f"; {never} never" if never else ""))  # fmt: skip
    path = str(rows["path"].iloc[0])
    limit = path.rpartition("-max")[2] if "-max" in path else ""  # "nginx-h2-max8": 8
    if path == "http1.1" or limit.isdigit():
        y = int(limit) + 0.5 if limit.isdigit() else 6.5
        what = (
            f"server's SETTINGS_MAX_CONCURRENT_STREAMS = {limit}"
            if limit.isdigit()
            else "Chrome: 6 HTTP/1.1 connections per origin"
        )
        ax.axhline(y, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(what, (0.01, y + 0.1), xycoords=("axes fraction", "data"), fontsize=7,
                    color="0.35")  # fmt: skip
    top = int(rows["n_open"].max())
    ax.set_xticks(sorted(rows["n_open"].unique()))
    ax.set_xlim(rows["n_open"].min() - 0.6, top + 0.9)
    ax.set_ylim(0.3, top + 1.6)
    ax.set(xlabel="streams opened at once in one tab", ylabel="stream (in start order)")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")


def scale_out(run_dir: RunLike) -> list[Path]:
    """`scale_out.png`: p50/p99 latency and CPU per token (server, plus Redis stacked) vs N,
    one line per server setup (processes and log)."""
    run = as_run(run_dir)
    if "scale_out" not in run.extra:
        return []
    df = run.extra["scale_out"]
    fig, (ax_lat, ax_cpu) = figure(2, width_in=4.8, height_in=3.8)
    styles = ("-o", "-s", "-^", "-D", "-v")
    for i, (setup, rows) in enumerate(df.groupby("setup", sort=False)):
        rows = rows.sort_values("n")
        style = styles[i % len(styles)]
        ax_lat.plot(rows["n"], rows["latency_p99_ms"].clip(lower=LATENCY_FLOOR_MS), style,
                    markersize=4, label=f"{setup} p99")  # fmt: skip
        ax_lat.plot(rows["n"], rows["latency_p50_ms"].clip(lower=LATENCY_FLOOR_MS), ":",
                    color=ax_lat.lines[-1].get_color(), linewidth=1)  # fmt: skip
        total = rows["server_cpu_per_token_us"] + rows["redis_cpu_per_token_us"]
        ax_cpu.plot(rows["n"], total, style, markersize=4, label=f"{setup}: server + Redis")
        if (rows["redis_cpu_per_token_us"] > 0).any():
            ax_cpu.plot(rows["n"], rows["server_cpu_per_token_us"], "--",
                        color=ax_cpu.lines[-1].get_color(), linewidth=1,
                        label=f"{setup}: server only")  # fmt: skip
    ax_lat.axhline(float(df["target_p99_ms"].iloc[0]), color="grey", linestyle=":", linewidth=1)
    ax_lat.set(xscale="log", yscale="log", xlabel="concurrent SSE streams",
               ylabel="token latency (ms)",
               title="p99 (markers), p50 (dotted); grey: target")  # fmt: skip
    ax_cpu.set(xscale="log", xlabel="concurrent SSE streams", ylabel="CPU per token (us)",
               title="CPU per token delivered, all server processes (+ Redis)")  # fmt: skip
    for ax in (ax_lat, ax_cpu):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    return [save(fig, run.path / "scale_out.png")]
