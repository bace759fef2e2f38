"""The `loss` experiment's arms, read from arrival times: tails, gaps and lost tokens per arm.

An *arm* is one way of carrying token streams across the lossy path, measured at each loss:
every transport on its own connections (TCP, or QUIC for WebTransport with tokens on a
reliable stream), WebTransport with one datagram per token (unreliable: a lost datagram is a
lost token, nothing resends it), and N SSE streams through Caddy over ONE HTTP/3 (QUIC)
connection, ONE HTTP/2 (TCP) connection, or N HTTP/1.1 connections. `arm_summary` makes one
row of the experiment's `arms` table from that point's tokens and streams tables; `loss_facts`
and `loss_reading` read that table and the `path` table (congestion controllers and socket
buffers in use), so every sentence is computed from what was measured.

Each arm row carries its `cc_setting` (the experiment's `Spec.cc`: "kernel" = the defaults,
or "reno"/"cubic" in force for the namespace's TCP and aioquic's QUIC alike). Facts are
those of the first setting (the one in the main tables); the reading gives every setting's
arms, and, with more than one setting, whether the order of TCP arms against QUIC arms by
p99 at the highest loss changed between them (`cc_ordering`): the stack of an arm is read
from its `cc` column ("kernel": TCP; else the QUIC controller of its connections). Runs
stored before `cc_setting` existed ran the defaults: `with_setting` calls them "kernel".

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

import dataclasses
import math

import pandas as pd

from analysis.matrix import count_of

# the `arms` table's columns as a report shows them, one row per (loss, arm)
ARM_COLUMNS = ["cc_setting", "loss_pct", "arm", "transport", "delivery", "http", "streams",
               "completed", "tokens_expected", "tokens_received", "tokens_lost", "p99_ms", "n",
               "stream_p99_ms_median", "gap_max_ms", "connections", "retransmits", "cc",
               "rcvbuf", "dropped_in_packets", "dropped_out_packets"]  # fmt: skip
PATH_COLUMNS = ["cc_setting", "side", "tcp_congestion_control", "quic_cc", "rmem_default",
                "rmem_max", "wmem_default", "wmem_max", "udp_rcvbuf"]  # fmt: skip
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


def with_setting(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its `cc_setting` column ("kernel" for runs stored before it existed)."""
    return table if "cc_setting" in table else table.assign(cc_setting="kernel")


def _first_setting(arms: pd.DataFrame) -> pd.DataFrame:
    arms = with_setting(arms)
    return arms[arms["cc_setting"] == arms["cc_setting"].iloc[0]] if len(arms) else arms


def _highest(arms: pd.DataFrame) -> pd.DataFrame:
    return arms[arms["loss_pct"] == arms["loss_pct"].max()]


def _fact(entry: dict[str, float], name: str, value: float, n: float) -> None:
    entry[name], entry[count_of(name)] = float(value), float(n)


def loss_facts(arms: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per transport, at the highest loss: `loss_p99_ms` and `loss_gap_max_ms` of its own arm
    (reliable delivery); for a transport with a datagram arm, that arm's p99 and tokens lost
    (n: tokens expected); for the shared-connection transport, per-stream p99 (median over
    the streams) over one HTTP/3 connection, one HTTP/2 connection and N HTTP/1.1 ones.
    Under the first controller setting only (that of the main tables)."""
    out: dict[str, dict[str, float]] = {}
    for row in _highest(_first_setting(arms)).itertuples(index=False):
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
    several = path["cc_setting"].nunique() > 1
    for row in path.itertuples(index=False):
        side = f"[{row.cc_setting}] {row.side}" if several else row.side
        parts.append(f"{side}: TCP {row.tcp_congestion_control}, QUIC {row.quic_cc}, "
                     f"net.core.rmem_default/rmem_max {row.rmem_default}/{row.rmem_max} B, "
                     f"UDP socket receive buffer {row.udp_rcvbuf}")  # fmt: skip
    return "Congestion control and buffers in use: " + "; ".join(parts) + "."


def _setting_label(setting: str, path: pd.DataFrame | None) -> str:
    """The setting and what the path table read back, e.g. `reno (server TCP reno, QUIC
    reno)`."""
    if path is None or path.empty:
        return setting
    rows = with_setting(path)
    rows = rows[(rows["cc_setting"] == setting) & rows["side"].str.startswith("server")]
    if rows.empty:
        return setting
    row = rows.iloc[0]
    return f"{setting} (server TCP {row['tcp_congestion_control']}, QUIC {row['quic_cc']})"


Ranked = list[tuple[str, str, float]]  # (arm, "TCP"/"QUIC", p99 ms), fastest first


def _ranked(top: pd.DataFrame) -> Ranked:
    """The reliable arms at one loss, fastest first: own connections by token p99, shared
    ones by per-stream p99 (median). Datagram arms are left out: their tail is that of the
    tokens that came, their price is tokens, not time."""
    rows = []
    for _, r in top[top["delivery"] != "datagram"].iterrows():
        value = r["stream_p99_ms_median"] if r["delivery"] == SHARED else r["p99_ms"]
        rows.append((str(r["arm"]), "TCP" if r["cc"] == "kernel" else "QUIC", float(value)))
    return sorted(rows, key=lambda x: x[2])


@dataclasses.dataclass(frozen=True)
class Ordering:
    """Per setting, per group ("own" connections, "shared" through Caddy), the reliable arms
    at the highest loss, fastest first; per setting after the first, the (TCP arm, QUIC arm)
    pairs of one group whose order flipped against the first setting."""

    settings: list[str]
    order: dict[str, dict[str, Ranked]]
    flipped: dict[str, list[tuple[str, str]]]


def cc_ordering(arms: pd.DataFrame) -> Ordering:
    """Whether aligning the controllers changed which of TCP and QUIC was faster, per pair."""
    arms = with_setting(arms)
    settings = list(dict.fromkeys(arms["cc_setting"]))
    order: dict[str, dict[str, Ranked]] = {}
    for setting in settings:
        top = _highest(arms[arms["cc_setting"] == setting])
        order[setting] = {"own": _ranked(top[top["delivery"] != SHARED]),
                          SHARED: _ranked(top[top["delivery"] == SHARED])}  # fmt: skip
    flipped: dict[str, list[tuple[str, str]]] = {}
    for setting in settings[1:]:
        flips = []
        for group, ranked in order[settings[0]].items():
            then = {arm: p99 for arm, _, p99 in ranked}
            now = {arm: p99 for arm, _, p99 in order[setting][group]}
            tcps = [a for a, stack, _ in ranked if stack == "TCP" and a in now]
            quics = [a for a, stack, _ in ranked if stack == "QUIC" and a in now]
            flips += [(t, q) for t in tcps for q in quics
                      if (then[t] < then[q]) != (now[t] < now[q])]  # fmt: skip
        flipped[setting] = flips
    return Ordering(settings, order, flipped)


def _ordering_sentence(arms: pd.DataFrame, path: pd.DataFrame | None) -> str:
    got = cc_ordering(arms)

    def listed(setting: str) -> str:
        return "; ".join(" < ".join(f"{a} ({s}) {v:.1f}" for a, s, v in ranked)
                         for ranked in got.order[setting].values() if ranked)  # fmt: skip

    base = got.settings[0]
    parts = [f"{_setting_label(s, path)}: {listed(s)}" for s in got.settings]
    verdicts = [f"{s} against {base}: " + (
        "the order of TCP and QUIC arms did not change" if not got.flipped[s] else
        "changed for " + ", ".join(f"{t} vs {q}" for t, q in got.flipped[s]))
        for s in got.settings[1:]]  # fmt: skip
    loss = float(arms["loss_pct"].max())
    caveat = "one run each, few losses per arm: a close pair can flip by chance"
    return (f"Reliable arms by p99 at {loss:g}% per controller setting (ms, fastest first): "
            + " | ".join(parts) + ". " + "; ".join(verdicts) + f" ({caveat}).")  # fmt: skip


def _setting_reading(arms: pd.DataFrame) -> list[str]:
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
    return sentences


def loss_reading(arms: pd.DataFrame, path: pd.DataFrame | None = None) -> str:
    """At the highest loss, per controller setting: each arm's p99 (n), longest gap and lost
    tokens; the shared connections' per-stream p99 side by side; the controllers and buffers
    in use; with two settings or more, whether the TCP-vs-QUIC order changed."""
    arms = with_setting(arms)
    settings = list(dict.fromkeys(arms["cc_setting"]))
    sentences: list[str] = []
    for setting in settings:
        if len(settings) > 1:
            sentences.append(f"Controller setting {_setting_label(setting, path)}:")
        sentences += _setting_reading(arms[arms["cc_setting"] == setting])
    if path is not None and not path.empty:
        sentences.append(_path_sentence(with_setting(path)))
    if len(settings) > 1:
        sentences.append(_ordering_sentence(arms, path))
    return " ".join(sentences)
