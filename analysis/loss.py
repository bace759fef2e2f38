"""The `loss` experiment's arms, read from arrival times: tails, gaps and lost tokens per arm.

An *arm* is one way of carrying token streams across the lossy path, measured at each loss:
every transport on its own connections (TCP, or QUIC for WebTransport with tokens on a
reliable stream), WebTransport with one datagram per token (unreliable: a lost datagram is a
lost token, nothing resends it), and N SSE streams through Caddy over ONE HTTP/3 (QUIC)
connection, ONE HTTP/2 (TCP) connection, or N HTTP/1.1 connections. `arm_summary` makes one
row of the experiment's `arms` table from that point's tokens and streams tables; `loss_facts`
and `loss_reading` read that table and the `path` table (congestion controllers and socket
buffers in use), so every sentence is computed from what was measured.

Reliable arms should lose nothing (TCP and QUIC streams retransmit); what loss costs them is
time: p99 latency and the longest gap between consecutive tokens of one stream. The datagram
arm's price is tokens: `tokens_lost` counts them (tokens expected minus distinct seqs
received, per stream, summed), and the reading states it beside the tail, never instead.
The p99 of an arm is over all its tokens' latencies (emit on the server, receipt on the
client, one clock), reported with n; for the shared-connection arms also the per-stream p99
(median over the streams), as in the `hol-blocking` experiment.

Pure pandas, no I/O: tests feed it hand-made rows.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.matrix import count_of

# the `arms` table's columns as a report shows them, one row per (loss, arm)
ARM_COLUMNS = ["loss_pct", "arm", "transport", "delivery", "http", "streams", "completed",
               "tokens_expected", "tokens_received", "tokens_lost", "p99_ms", "n",
               "stream_p99_ms_median", "gap_max_ms", "connections", "retransmits", "cc",
               "rcvbuf", "dropped_in_packets", "dropped_out_packets"]  # fmt: skip
PATH_COLUMNS = ["side", "tcp_congestion_control", "quic_cc", "rmem_default", "rmem_max",
                "wmem_default", "wmem_max", "udp_rcvbuf"]  # fmt: skip
SHARED = "shared"  # the `delivery` of the N-streams-through-Caddy arms


def arm_summary(tokens: pd.DataFrame, streams: pd.DataFrame) -> dict[str, float | int]:
    """One arm's figures at one loss: streams (completed: no error, nothing lost), tokens
    expected / received (distinct) / lost, token latency p99 over every token with its n,
    per-stream p99 (median over the streams), the longest gap, connections, retransmits
    (-1: unknown, the client's count: TCP_INFO, or QUIC loss detection)."""
    first = tokens.sort_values("t_recv_ns").drop_duplicates(["stream_id", "seq"])
    latency = first["latency_ms"].dropna()
    per_stream = first.groupby("stream_id")["latency_ms"].quantile(0.99)
    retrans = streams["retransmits"][streams["retransmits"] >= 0]
    return {
        "streams": len(streams),
        "completed": int(((streams["error"] == "") & (streams["lost"] == 0)).sum()),
        "tokens_expected": int(streams["tokens_expected"].sum()),
        "tokens_received": int(streams["tokens_received"].sum()),
        "tokens_lost": int(streams["lost"].clip(lower=0).sum()),
        "p99_ms": float(latency.quantile(0.99)) if len(latency) else math.nan,
        "n": len(latency),
        "stream_p99_ms_median": float(per_stream.median()) if len(per_stream) else math.nan,
        "gap_max_ms": float(streams["gap_max_ms"].max()),
        "connections": int(streams["connections"].sum()),
        "retransmits": int(retrans.sum()) if len(retrans) else -1,
    }


def _highest(arms: pd.DataFrame) -> pd.DataFrame:
    return arms[arms["loss_pct"] == arms["loss_pct"].max()]


def _fact(entry: dict[str, float], name: str, value: float, n: float) -> None:
    entry[name], entry[count_of(name)] = float(value), float(n)


def loss_facts(arms: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per transport, at the highest loss: `loss_p99_ms` and `loss_gap_max_ms` of its own arm
    (reliable delivery); for a transport with a datagram arm, that arm's p99 and tokens lost
    (n: tokens expected); for the shared-connection transport, per-stream p99 (median over
    the streams) over one HTTP/3 connection, one HTTP/2 connection and N HTTP/1.1 ones."""
    out: dict[str, dict[str, float]] = {}
    for row in _highest(arms).itertuples(index=False):
        entry = out.setdefault(str(row.transport), {})
        if row.delivery == "datagram":
            _fact(entry, "loss_dgram_p99_ms", row.p99_ms, row.n)
            _fact(entry, "loss_dgram_tokens_lost", row.tokens_lost, row.tokens_expected)
        elif row.delivery == SHARED:
            name = {"3": "loss_h3_p99_ms", "2": "loss_h2_p99_ms"}.get(str(row.http),
                                                                    "loss_h1_p99_ms")
            _fact(entry, name, row.stream_p99_ms_median, row.streams)
        else:
            _fact(entry, "loss_p99_ms", row.p99_ms, row.n)
            _fact(entry, "loss_gap_max_ms", row.gap_max_ms, row.streams)
    return out


def _arm_sentence(row: pd.Series) -> str:
    lost = (f", {row['tokens_lost']} of {row['tokens_expected']} tokens lost"
            if row["tokens_lost"] or row["delivery"] == "datagram" else "")  # fmt: skip
    failed = row["streams"] - row["completed"]
    failed_text = f", {failed} of {row['streams']} streams incomplete" if failed else ""
    return (f"{row['arm']} {row['p99_ms']:.1f} ms (n={row['n']}), longest gap "
            f"{row['gap_max_ms']:.0f} ms{lost}{failed_text}")  # fmt: skip


def _path_sentence(path: pd.DataFrame) -> str:
    parts = []
    for row in path.itertuples(index=False):
        parts.append(f"{row.side}: TCP {row.tcp_congestion_control}, QUIC {row.quic_cc}, "
                     f"net.core.rmem_default/rmem_max {row.rmem_default}/{row.rmem_max} B, "
                     f"UDP socket receive buffer {row.udp_rcvbuf}")  # fmt: skip
    return "Congestion control and buffers in use: " + "; ".join(parts) + "."


def loss_reading(arms: pd.DataFrame, path: pd.DataFrame | None = None) -> str:
    """At the highest loss: each arm's p99 (n), longest gap and lost tokens; the shared
    connections' per-stream p99 side by side; the controllers and buffers in use."""
    top = _highest(arms)
    loss = float(top["loss_pct"].iloc[0])
    own = top[top["delivery"] != SHARED]
    sentences = [f"At {loss:g}% loss each way, token latency p99: "
                 + "; ".join(_arm_sentence(r) for _, r in own.iterrows()) + "."]  # fmt: skip
    dgram = own[own["delivery"] == "datagram"]
    for _, row in dgram.iterrows():
        share = row["tokens_lost"] / row["tokens_expected"] if row["tokens_expected"] else math.nan
        sentences.append(f"{row['arm']} lost {row['tokens_lost']} of {row['tokens_expected']} "
                         f"tokens ({share:.0%}): datagrams are not resent, so its tail is "
                         "that of the tokens that arrived.")  # fmt: skip
    shared = top[top["delivery"] == SHARED]
    if not shared.empty:
        parts = [f"{r['arm']} {r['stream_p99_ms_median']:.1f} ms (longest gap "
                 f"{r['gap_max_ms']:.0f} ms, {r['completed']}/{r['streams']} complete)"
                 for _, r in shared.iterrows()]  # fmt: skip
        sentences.append("Per-stream p99 (median over the streams) through Caddy: "
                         + "; ".join(parts) + ".")  # fmt: skip
    if path is not None and not path.empty:
        sentences.append(_path_sentence(path))
    return " ".join(sentences)
