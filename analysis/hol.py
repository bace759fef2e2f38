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

Where a loss costs less than a stall (on the lab's sub-millisecond veth, TCP recovers a busy
connection's loss within about a round trip), the same question is read on the latency axis:
a token later than `LATE_MS` was held, and `co_held_fraction` asks which other streams' bytes
came out with it.

`point_summary` makes one row of the `hol-blocking` experiment's `hol` table; `hol_facts` and
`hol_reading` read that table. Pure pandas, no I/O: tests feed it hand-made arrival times.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.matrix import count_of

STALL_FACTOR = 4.0  # a gap this many scheduled intervals long is a stall, not jitter
# a token this late was held: on the clean veth every token came within 12 ms in 4 runs of 5
# (32 ms once, the 2-core machine busy); recovering a thin stream's loss takes an interval
LATE_MS = 20.0
HELD_TOLERANCE_MS = 1.0  # arriving this close to the late token: released with it


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



def co_held_fraction(tokens: pd.DataFrame, late_ms: float = LATE_MS,
                     tolerance_ms: float = HELD_TOLERANCE_MS) -> tuple[float, int]:  # fmt: skip
    """(mean fraction of the OTHER streams held back with each late token, late tokens seen);
    (NaN, 0) without a late token that had company.

    The latency reading of head-of-line blocking, for links whose recovery is shorter than a
    stall (`stalls` needs a gap of `STALL_FACTOR` intervals; on a sub-millisecond veth a loss
    costs far less). A token of stream s emitted at e and received at r > e + `late_ms` was
    held. Another stream was held WITH it when every token it emitted in [e - tolerance,
    r - tolerance) also arrived no earlier than r - tolerance: its bytes queued behind the
    same loss and came out with the same release. A stream that emitted nothing in that
    window does not count either way."""
    first = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    tol = tolerance_ms * 1e6
    fractions = []
    for late in first[first["latency_ms"] > late_ms].itertuples(index=False):
        lo, hi = late.t_emit_ns - tol, late.t_recv_ns - tol
        window = first[(first["stream_id"] != late.stream_id) & (first["t_emit_ns"] >= lo)
                       & (first["t_emit_ns"] < hi)]  # fmt: skip
        if not window.empty:
            fractions.append(float((window.groupby("stream_id")["t_recv_ns"].min() >= hi).mean()))
    if not fractions:
        return float("nan"), 0
    return float(np.mean(fractions)), len(fractions)


def point_summary(tokens: pd.DataFrame, streams: pd.DataFrame, interval_ms: float) -> dict:
    """One point's head-of-line figures (its N streams, on one connection or on N): streams
    completed, connections, first-token time (median, worst), per-stream latency p99 (median
    over the streams, and the worst), the longest gap, stalls and the co-stalled fraction,
    late tokens (with company) and the co-held fraction, the client's retransmits (-1:
    unknown; a shared HTTP/2 connection's count sits on one stream, so the sum is exact)."""
    p99 = tokens.groupby("stream_id")["latency_ms"].quantile(0.99)
    fraction, seen = co_stalled_fraction(tokens, interval_ms)
    held, late = co_held_fraction(tokens)
    retrans = streams["retransmits"][streams["retransmits"] >= 0]
    return {
        "streams": len(streams),
        "completed": int(((streams["error"] == "") & (streams["lost"] == 0)).sum()),
        "connections": int(streams["connections"].sum()),
        "ttft_ms_median": float(streams["ttft_ms"].median()),
        "ttft_ms_max": float(streams["ttft_ms"].max()),
        "stream_p99_ms_median": float(p99.median()),
        "stream_p99_ms_max": float(p99.max()),
        "gap_max_ms": float(streams["gap_max_ms"].max()),
        "stalls": seen,
        "co_stalled": fraction,
        "late_tokens": late,
        "co_held": held,
        "client_retransmits": int(retrans.sum()) if len(retrans) else -1,
    }


# the `hol` table's columns as a report shows them, one row per (loss, transport, arm)
HOL_COLUMNS = ["loss_pct", "transport", "arm", "streams", "completed", "connections",
               "ttft_ms_median", "ttft_ms_max", "stream_p99_ms_median", "stream_p99_ms_max",
               "gap_max_ms", "stalls", "co_stalled", "late_tokens", "co_held",
               "client_retransmits", "dropped_in_packets", "dropped_out_packets"]  # fmt: skip


def _highest(hol: pd.DataFrame) -> pd.DataFrame:
    return hol[hol["loss_pct"] == hol["loss_pct"].max()]


def hol_facts(hol: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per transport, at the highest loss of a `hol` table (column `http` "2" or "1.1"):
    per-stream p99 (median over the streams) in each arm; over one HTTP/2 connection, the
    co-stalled and co-held fractions, each with its sample size."""
    out: dict[str, dict[str, float]] = {}
    for (transport, http), row in _highest(hol).groupby(["transport", "http"]):
        entry, r = out.setdefault(str(transport), {}), row.iloc[0]
        name = "hol_p99_h2_ms" if http == "2" else "hol_p99_h1_ms"
        entry[name], entry[count_of(name)] = float(r["stream_p99_ms_median"]), float(r["streams"])
        if http == "2":
            for name, value, n in (("hol_costalled", "co_stalled", "stalls"),
                                   ("hol_coheld", "co_held", "late_tokens")):  # fmt: skip
                entry[name], entry[count_of(name)] = float(r[value]), float(r[n])
    return out


def _shared(what: str, h2: pd.Series, h1: pd.Series, count: str, share: str) -> str:
    """How many of `what` each arm saw, and the share of the other streams caught with them."""
    if h2[count] == 0 and h1[count] == 0:
        return f"No {what} in either arm."
    parts = [f"{h[count]} {label}" + ("" if math.isnan(h[share]) else
                                      f" ({h[share]:.0%} of the other streams with each)")
             for h, label in ((h2, "over one HTTP/2 connection"), (h1, "over separate ones"))]
    return f"{what[0].upper()}{what[1:]}: {parts[0]}, against {parts[1]}."


def hol_reading(hol: pd.DataFrame) -> str:
    """Per transport, at the highest loss: one HTTP/2 connection against N connections."""
    sentences = []
    for transport, rows in _highest(hol).groupby("transport"):
        h2, h1 = (rows[rows["http"] == v].iloc[0] for v in ("2", "1.1"))
        sentences += [
            f"At {h2['loss_pct']:g}% loss ({transport}, {h2['streams']} streams), per-stream "
            f"latency p99 (median over the streams) was {h2['stream_p99_ms_median']:.1f} ms on "
            f"one HTTP/2 connection against {h1['stream_p99_ms_median']:.1f} ms on separate "
            f"HTTP/1.1 connections, the longest gap {h2['gap_max_ms']:.0f} ms against "
            f"{h1['gap_max_ms']:.0f} ms.",
            _shared(f"stalls (gaps over {STALL_FACTOR:g} intervals)", h2, h1, "stalls",
                    "co_stalled"),
            _shared(f"tokens over {LATE_MS:g} ms late", h2, h1, "late_tokens", "co_held"),
            f"First token (median over the streams, connection setup included): "
            f"{h2['ttft_ms_median']:.0f} ms against {h1['ttft_ms_median']:.0f} ms, the slowest "
            f"{h2['ttft_ms_max']:.0f} ms against {h1['ttft_ms_max']:.0f} ms.",
        ]  # fmt: skip
    return " ".join(sentences)
