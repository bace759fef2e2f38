"""Head-of-line blocking, read from arrival times: when one stream stalls, do the others?

Streams multiplexed over one TCP connection share its byte order: a lost segment holds back
every byte behind it until the retransmission arrives, whichever stream those bytes belong
to. Separate connections stall alone. The tokens table shows which happened without any
packet trace: a *stall* is a gap between consecutive new tokens of one stream longer than
`factor` times the stream's scheduled inter-token interval; another stream of the same
group is *co-stalled* when it received no token inside that stall's window, short of its
last interval (the retransmission releases every stream's held bytes within a moment; a
token arriving in the stall's last interval is that same release, not a token that got
through). With N streams on one connection a loss-induced stall should be
shared by nearly all N - 1 others; on N connections only by chance.

Pure pandas, no I/O: tests feed it hand-made arrival times.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STALL_FACTOR = 4.0  # a gap this many scheduled intervals long is a stall, not jitter


def stalls(tokens: pd.DataFrame, interval_ms: float, factor: float = STALL_FACTOR) -> pd.DataFrame:
    """One row per stall: stream_id, start_ns, end_ns, gap_ms (first deliveries only)."""
    first = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    rows = []
    for stream_id, group in first.groupby("stream_id", sort=False):
        t = group["t_recv_ns"].to_numpy(dtype=np.int64)
        gaps = np.diff(t) / 1e6
        for i in np.flatnonzero(gaps > factor * interval_ms):
            rows.append((stream_id, int(t[i]), int(t[i + 1]), float(gaps[i])))
    return pd.DataFrame(rows, columns=["stream_id", "start_ns", "end_ns", "gap_ms"])


def co_stalled_fraction(tokens: pd.DataFrame, interval_ms: float,
                        factor: float = STALL_FACTOR) -> tuple[float, int]:  # fmt: skip
    """(mean fraction of the OTHER streams that were silent through each stall, stalls seen);
    (NaN, 0) with no stall or a single stream."""
    found = stalls(tokens, interval_ms, factor)
    first = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    arrivals = {
        sid: g["t_recv_ns"].to_numpy(dtype=np.int64) for sid, g in first.groupby("stream_id")
    }
    if found.empty or len(arrivals) < 2:
        return float("nan"), 0
    fractions = []
    for stall in found.itertuples(index=False):
        others = [t for sid, t in arrivals.items() if sid != stall.stream_id]
        # only streams that were live then (first token before the stall, last one after)
        live = [t for t in others if t[0] <= stall.start_ns and t[-1] >= stall.end_ns]
        if not live:
            continue
        release_ns = stall.end_ns - interval_ms * 1e6
        silent = sum(1 for t in live if not np.any((t > stall.start_ns) & (t < release_ns)))
        fractions.append(silent / len(live))
    if not fractions:
        return float("nan"), 0
    return float(np.mean(fractions)), len(fractions)
