"""Charts of the failover and storm experiments: what a node's death cost the clients, and the
load the survivors and Redis took.

Each function reads a stored run and writes one PNG into it; the numbers come from
`analysis.failover`, the same code the facts, tables and readings use.
"""

from __future__ import annotations

from pathlib import Path

from analysis import failover as fo
from presentation.charts import RunLike, as_run, figure, save, transport_order


def failover(run_dir: RunLike) -> list[Path]:
    """`failover.png`: per condition (log, routing, node killed), tokens lost + duplicated
    per transport, and the recovery p99 with the transport's own retry delay as a tick."""
    run = as_run(run_dir)
    if "kills" not in run.extra or run.streams.empty:
        return []
    table = fo.condition_table(run.streams, run.extra["kills"], run.extra["recovery"])
    conditions = list(dict.fromkeys(table["condition"]))
    order = transport_order(table["transport"].unique())
    fig, (harm, rec) = figure(2, width_in=6.4, height_in=4.0)
    width = 0.8 / max(1, len(conditions))
    for k, condition in enumerate(conditions):
        part = table[table["condition"] == condition].set_index("transport")
        xs = [i + k * width for i, t in enumerate(order) if t in part.index]
        names = [t for t in order if t in part.index]
        harm.bar(xs, (part.loc[names, "lost"] + part.loc[names, "duplicated"]).tolist(),
                 width=width, label=condition)  # fmt: skip
        rec.bar(xs, part.loc[names, "recovery_p99_ms"].fillna(0).tolist(), width=width,
                label=condition)  # fmt: skip
        rec.scatter(xs, part.loc[names, "retry_delay_ms"].tolist(), marker="_", s=120,
                    color="black", zorder=3)  # fmt: skip
    for ax, label in ((harm, "tokens lost + duplicated"), (rec, "recovery p99 (ms)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(order))], order, rotation=45)
        ax.set(ylabel=label)
    harm.legend(fontsize=6)
    rec.set_title("tick: the transport's own retry delay")
    fig.suptitle("A node SIGKILLed mid-answer: what each client lost and how long it waited")
    return [save(fig, run.path / "failover.png")]


def storm(run_dir: RunLike) -> list[Path]:
    """`storm.png`: the recovery times' distribution per condition, and each process's CPU
    (cores, from /proc) around the kill."""
    import numpy as np

    run = as_run(run_dir)
    rec, samples = run.extra.get("recovery"), run.extra.get("samples")
    if rec is None or rec.empty:
        return []
    fig, (cdf, cpu) = figure(2, width_in=6.4, height_in=4.0)
    for (condition, transport), rows in rec.groupby(["condition", "transport"], sort=False):
        values = np.sort(rows["kill_to_next_ms"].dropna().to_numpy())
        if len(values):
            cdf.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                     label=f"{transport}, {condition}")  # fmt: skip
    cdf.set(xlabel="kill -> next new token (ms)", ylabel="share of streams")
    cdf.legend(fontsize=6)
    if samples is not None and not samples.empty:
        first = samples[samples["condition"] == samples["condition"].iloc[0]]
        for process, rows in first.groupby("process", sort=False):
            rows = rows.sort_values("t_ns")
            t = (rows["t_ns"] - rows["t_kill_ns"]).to_numpy()[1:] / 1e9
            dt = np.diff(rows["t_ns"].to_numpy()) / 1e9
            cores = np.diff(rows["cpu_s"].to_numpy()) / np.where(dt > 0, dt, np.nan)
            cpu.plot(t, cores, label=str(process))
        cpu.axvline(0, color="black", linewidth=0.8)
        cpu.set(xlabel="s after the kill", ylabel="CPU (cores)",
                title=str(first["condition"].iloc[0]))  # fmt: skip
        cpu.legend(fontsize=6)
    fig.suptitle("A node carrying many streams dies: recovery and load on the survivors")
    return [save(fig, run.path / "storm.png")]
