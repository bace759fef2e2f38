"""What a node's death cost the clients, from the tables alone (failover and storm).

Theory of operation
-------------------
A run stores the tokens each client received (`t_recv_ns`, the client's wall clock) and, in
its `kills` table, the instant each node was killed (`t_kill_ns`, the same clock, taken just
before SIGKILL) per condition and transport. Everything here is a pure function of those
frames:

- `recovery(tokens, kills)`: per stream, the last token received of those generated before
  the kill, and the first *new* seq (a duplicate is no recovery) generated after it.
  Generated, not received: a token the dead node emitted just before the signal may still
  arrive after it (through a replica's XREAD, or a socket buffer), and splitting by arrival
  would then measure 25 ms of normal token spacing instead of the outage. `t_emit_ns` is the
  server's `time.time_ns()` on this same host, so the split is on one clock. `recovery_ms`
  (received times, the client's clock) is what the reader saw stall; `kill_to_next_ms`
  starts at the kill. A stream with no token before the kill (a one-shot answer, which
  arrives whole at the end) has no `recovery_ms`, only `kill_to_next_ms`.
- `summary(streams, rec)`: per condition and transport, lost, duplicated, reconnects and the
  recovery's quantiles, beside the transport's own retry delay (a column the run adds:
  SSE's `retry:`, the client's first backoff, the short-poll interval), which bounds the
  recovery from below whatever the log does.
- `cpu_cores(samples, start_ns, end_ns)`: a process's CPU rate over a window from the
  sampler's rows (harness/sampler.py): cores, per process named in the `process` column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

KEYS = ["condition", "transport"]


def recovery(tokens: pd.DataFrame, kills: pd.DataFrame) -> pd.DataFrame:
    """One row per stream of a condition with a kill: the tokens generated before the kill
    that the client received, when it received the last of them (`last_before_ns`) and the
    first token generated after the kill (`first_after_ns`), `recovery_ms` between the two
    and `kill_to_next_ms` from the kill; NaN where a side has no token."""
    import numpy as np
    import pandas as pd

    first = tokens.sort_values("t_recv_ns").drop_duplicates(["condition", "transport",
                                                               "stream_id", "seq"])  # fmt: skip
    # one kill per trial: a kills table naming each trial's stream is matched by it (several
    # trials share a condition); one kill for many streams (a storm) by the condition
    on = [*KEYS, "stream_id"] if "stream_id" in kills else KEYS
    joined = first.merge(kills[[*on, "t_kill_ns"]], on=on)
    rows = []
    for (condition, transport, stream), group in joined.groupby([*KEYS, "stream_id"]):
        kill = int(group["t_kill_ns"].iloc[0])
        emitted_before = group["t_emit_ns"].to_numpy() <= kill
        recv = group["t_recv_ns"].to_numpy()
        before, after = recv[emitted_before], recv[~emitted_before]
        last = float(before.max()) if len(before) else np.nan
        nxt = float(after.min()) if len(after) else np.nan
        rows.append({"condition": condition, "transport": transport, "stream_id": stream,
                     "t_kill_ns": kill, "tokens_before": len(before), "last_before_ns": last,
                     "first_after_ns": nxt, "recovery_ms": (nxt - last) / 1e6,
                     "kill_to_next_ms": (nxt - kill) / 1e6})  # fmt: skip
    columns = ["condition", "transport", "stream_id", "t_kill_ns", "tokens_before",
               "last_before_ns", "first_after_ns", "recovery_ms", "kill_to_next_ms"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def summary(streams: pd.DataFrame, rec: pd.DataFrame) -> pd.DataFrame:
    """Per condition and transport: streams, completed share, lost, duplicated, reconnects,
    recovery p50/p99/max (ms), and the retry delay column if the streams carry one."""
    import pandas as pd

    grouped = streams.groupby(KEYS, sort=False)
    out = pd.DataFrame({
        "streams": grouped.size(),
        "completed": grouped["error"].apply(lambda e: float((e == "").mean())),
        "lost": grouped["lost"].sum(),
        "duplicated": grouped["duplicated"].sum(),
        "reconnects": grouped["reconnects"].sum(),
    })  # fmt: skip
    if "retry_delay_ms" in streams:
        out["retry_delay_ms"] = grouped["retry_delay_ms"].max()
    by = rec.groupby(KEYS, sort=False)["recovery_ms"]
    out["recovery_p50_ms"] = by.quantile(0.5)
    out["recovery_p99_ms"] = by.quantile(0.99)
    out["recovery_max_ms"] = by.max()
    out["kill_to_next_p99_ms"] = rec.groupby(KEYS, sort=False)["kill_to_next_ms"].quantile(0.99)
    return out.reset_index()


def condition_table(streams: pd.DataFrame, kills: pd.DataFrame, rec: pd.DataFrame) -> pd.DataFrame:
    """`summary` with each condition's `log`, `routing`, `mode` and `retry_delay_ms` from the
    run's kills table (one row per trial)."""
    info = kills.groupby(KEYS, sort=False)[["log", "routing", "mode", "retry_delay_ms"]].first()
    info = info.reset_index()
    table = summary(streams.merge(info[[*KEYS, "retry_delay_ms"]], on=KEYS), rec)
    return table.merge(info.drop(columns="retry_delay_ms"), on=KEYS)


def cpu_cores(samples: pd.DataFrame, start_ns: int, end_ns: int) -> pd.DataFrame:
    """Per `process`: CPU cores used between the first sample at or after `start_ns` and the
    last at or before `end_ns` (NaN with fewer than two samples in the window)."""
    import numpy as np
    import pandas as pd

    rows = []
    for process, group in samples.groupby("process", sort=False):
        inside = group[(group["t_ns"] >= start_ns) & (group["t_ns"] <= end_ns)]
        inside = inside.sort_values("t_ns")
        cores = np.nan
        if len(inside) >= 2:
            dt = (inside["t_ns"].iloc[-1] - inside["t_ns"].iloc[0]) / 1e9
            cores = (inside["cpu_s"].iloc[-1] - inside["cpu_s"].iloc[0]) / dt if dt > 0 else np.nan
        lag = inside["loop_lag_ms"].max() if "loop_lag_ms" in inside else np.nan
        rows.append({"process": process, "cores": cores, "loop_lag_max_ms": lag,
                     "samples": len(inside)})  # fmt: skip
    return pd.DataFrame(rows, columns=["process", "cores", "loop_lag_max_ms", "samples"])


def survivors_text(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(transports with 0 lost and 0 duplicated in every condition of `table`, the others)."""
    clean = table.groupby("transport", sort=False).apply(
        lambda g: bool(
            (g["lost"] == 0).all() and (g["duplicated"] == 0).all() and (g["completed"] >= 1).all()
        ),
        include_groups=False,
    )
    return [str(t) for t, ok in clean.items() if ok], [str(t) for t, ok in clean.items() if not ok]
