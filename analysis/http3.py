"""HTTP/1.1, HTTP/2 and HTTP/3 through one Caddy, at several round-trip times: the tables and
the reading of the `http3` experiment, computed from its records alone.

Theory of operation. The experiment records, per point (one transport, one HTTP version, one
QUIC congestion controller for HTTP/3, one round-trip time), the usual streams and tokens
tables, plus an `http3_points` table that names each point's `condition` with its
`version`, `cc` and `rtt_ms`. Everything here joins on `condition` and groups on those:

- `summary`: per RTT, version, cc and transport: streams, completed, first token (TTFT)
  p50, token latency p50 and p99 with the number of token latencies behind them, bytes per
  token received as the stack counted them (`source` "kernel": TCP payload from TCP_INFO,
  "udp": QUIC's UDP payload, counted by clients/quic.py), connections, and the first
  connection's handshake (TCP: TLS after connect; QUIC: Initial to HandshakeCompleted).
- `version_ttft`: per RTT and version, the median over transports of the TTFT p50, and the
  difference to HTTP/1.1 in round trips (what the handshakes cost: TCP connect 1 RTT + TLS
  1.3 1 RTT before the request; QUIC 1 RTT). MEASURED caveat: the TCP fault proxy
  terminates TCP, so the client's connect completes on loopback (connect_ms ~1-6 ms at
  100 ms RTT) and the TCP rows miss the SYN's round trip; `reading` says so when the
  connect it measured is under half an RTT.
- `reading`: sentences built from those numbers (no sentence is written before the data).

Physics the reading relies on, not thresholds: a request over a fresh TCP+TLS 1.3
connection waits 2 RTT before it can leave (connect, then the TLS flight), over QUIC 1 RTT
(RFC 9000 7: transport and TLS handshakes in one; 0-RTT is not used here), and the response
head needs one more RTT. Pure pandas, no I/O.
"""

from __future__ import annotations

import math

import pandas as pd

KEYS = ["rtt_ms", "version", "cc", "transport"]


def label(version: str, cc: str) -> str:
    """How a row names the stack: "HTTP/1.1", "HTTP/2", "HTTP/3 (reno)"."""
    return f"HTTP/{version}" + (f" ({cc})" if version == "3" else "")


def _with_points(frame: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    cols = points[["condition", "version", "cc", "rtt_ms"]].drop_duplicates("condition")
    out = frame.merge(cols, on="condition", how="inner")
    out["version"] = out["version"].astype(str)
    return out


def summary(streams: pd.DataFrame, tokens: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per RTT, version, cc and transport (module docstring); sorted by RTT then version."""
    s = _with_points(streams, points)
    t = _with_points(tokens, points)
    done = (s["error"].fillna("") == "") & (s["lost"] == 0)
    s = s.assign(completed=done.astype(int), handshake=s["tls_handshake_ms"].astype(float),
                 connect=s["connect_ms"].astype(float))  # fmt: skip
    out = s.groupby(KEYS, sort=False).agg(
        streams=("stream_id", "size"),
        completed=("completed", "sum"),
        stack=("stack", lambda v: "/".join(sorted(set(v.fillna("").astype(str)) - {""}))),
        source=("bytes_source", lambda v: "/".join(sorted(set(v.fillna("").astype(str))))),
        ttft_p50_ms=("ttft_ms", "median"),
        connect_p50_ms=("connect", "median"),
        handshake_p50_ms=("handshake", "median"),
        connections=("connections", "sum"),
        tokens=("tokens_received", "sum"),
        bytes_down=("bytes_down", "sum"),
    )
    out["bytes_per_token"] = out["bytes_down"] / out["tokens"].where(out["tokens"] > 0)
    lat = t.groupby(KEYS, sort=False)["latency_ms"]
    out = out.join(lat.median().rename("latency_p50_ms"))
    out = out.join(lat.quantile(0.99).rename("latency_p99_ms"))
    out = out.join(lat.size().rename("latency_n"))
    out["latency_n"] = out["latency_n"].fillna(0).astype(int)
    out = out.drop(columns=["bytes_down"]).reset_index()
    out.insert(1, "stack_label", [label(v, c) for v, c in zip(out["version"], out["cc"],
                                                               strict=True)])  # fmt: skip
    return out.sort_values(["rtt_ms", "version", "cc", "transport"], kind="stable").reset_index(
        drop=True
    )


def version_ttft(table: pd.DataFrame) -> pd.DataFrame:
    """Per RTT and stack label: the median over transports of TTFT p50, and its difference to
    HTTP/1.1 at the same RTT, in ms and in round trips (NaN at RTT 0)."""
    rows = table.groupby(["rtt_ms", "stack_label"], sort=False).agg(
        ttft_ms=("ttft_p50_ms", "median"),
        handshake_ms=("handshake_p50_ms", "median"),
        transports=("transport", "nunique"),
    )
    rows = rows.reset_index()
    base = rows[rows["stack_label"] == label("1.1", "")].set_index("rtt_ms")["ttft_ms"]
    rows["vs_http1_ms"] = rows["ttft_ms"] - rows["rtt_ms"].map(base)
    rtt = rows["rtt_ms"].where(rows["rtt_ms"] > 0)
    rows["vs_http1_rtts"] = rows["vs_http1_ms"] / rtt
    return rows


def relay_check(checks: pd.DataFrame) -> pd.DataFrame:
    """The UDP relay's counts against the QUIC clients' own, as ratios (1.0: the same bytes):
    up, what the relay received against what the clients sent; down, what it forwarded
    against what the clients received (datagrams that reached a client after it closed its
    socket are the relay's only)."""
    needed = {"relay_bytes_up_received", "relay_bytes_down", "client_bytes_up"}
    if checks.empty or not needed <= set(checks.columns):  # none, or an older run's
        return checks.iloc[0:0]
    out = checks.copy()
    for way, relay in (("up", "relay_bytes_up_received"), ("down", "relay_bytes_down")):
        client = out[f"client_bytes_{way}"].astype(float)
        out[f"bytes_{way}_ratio"] = out[relay] / client.where(client > 0)
    return out


def _ms(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0f} ms"


def reading(table: pd.DataFrame, stacks: pd.DataFrame, checks: pd.DataFrame) -> str:
    """What the run says, in sentences computed from its tables."""
    if table.empty:
        return "No point was measured."
    by_version = version_ttft(table)
    parts: list[str] = []
    for rtt, rows in by_version.groupby("rtt_ms", sort=True):
        figures = ", ".join(f"{r.stack_label} {_ms(r.ttft_ms)}" for r in rows.itertuples())
        parts.append(f"At {rtt:g} ms RTT the median first token (over transports) was {figures}.")
    rtts = sorted(by_version["rtt_ms"].unique())
    if len(rtts) > 1 and rtts[-1] > 0:
        top = by_version[by_version["rtt_ms"] == rtts[-1]].set_index("stack_label")
        h2 = label("2", "")
        # aioquic's default controller first: the one a client gets without asking
        h3 = sorted((s for s in top.index if s.startswith("HTTP/3")), key=lambda s: "reno" not in s)
        if h2 in top.index and h3:
            saved = top.loc[h2, "ttft_ms"] - top.loc[h3[0], "ttft_ms"]
            parts.append(
                f"At {rtts[-1]:g} ms, {h3[0]} reached the first token {abs(saved):.0f} ms "
                f"({abs(saved) / rtts[-1]:.1f} RTT) {'sooner' if saved > 0 else 'later'} than "
                f"HTTP/2; its QUIC handshake took {_ms(top.loc[h3[0], 'handshake_ms'])}, "
                f"HTTP/2's TLS handshake after connect {_ms(top.loc[h2, 'handshake_ms'])} "
                "(medians)."
            )
    if rtts[-1] > 0:
        tcp = table[(table["rtt_ms"] == rtts[-1]) & (table["version"] != "3")]
        quic = table[(table["rtt_ms"] == rtts[-1]) & (table["version"] == "3")]
        connect, shake = tcp["connect_p50_ms"].median(), quic["handshake_p50_ms"].median()
        if math.isfinite(connect) and connect < rtts[-1] / 2:
            parts.append(
                f"Caveat: over TCP the connect took {connect:.1f} ms at {rtts[-1]:g} ms RTT "
                "(median): the fault proxy terminates TCP on loopback, so the SYN round trip "
                "a real path costs is missing from the HTTP/1.1 and HTTP/2 first tokens here "
                "(one RTT each), while QUIC's handshake crossed the relay"
                + (f" ({shake:.0f} ms)." if math.isfinite(shake) else ".")
            )
    tail = table[table["rtt_ms"] == rtts[-1]].groupby("stack_label")["latency_p99_ms"].median()
    if len(tail) > 1:
        parts.append(
            f"Token latency p99 at {rtts[-1]:g} ms RTT (median over transports): "
            + ", ".join(f"{k} {_ms(v)}" for k, v in tail.items())
            + " (no loss on this path: nothing for multiplexing or QUIC's streams to repair)."
        )
    per_token = table[table["rtt_ms"] == rtts[0]].groupby("stack_label")["bytes_per_token"]
    bpt = per_token.median()
    if len(bpt) > 1:
        parts.append(
            f"Bytes per token received at {rtts[0]:g} ms RTT (median over transports; TCP "
            "payload for HTTP/1.1 and HTTP/2, UDP payload for HTTP/3): "
            + ", ".join(f"{k} {v:.0f}" for k, v in bpt.items())
            + "."
        )
    quic_bpt = table[table["version"] == "3"].groupby("rtt_ms")["bytes_per_token"].median()
    if len(quic_bpt) > 1 and quic_bpt.max() > 1.5 * quic_bpt.min():
        parts.append(
            "HTTP/3's bytes per token changed with the RTT: "
            + ", ".join(f"{v:.0f} at {r:g} ms" for r, v in quic_bpt.items())
            + " (same payload; the difference is QUIC datagrams, see the connections table: "
            "not explained by this run's counts alone)."
        )
    ccs = table[table["version"] == "3"].groupby(["rtt_ms", "cc"])["ttft_p50_ms"].median()
    if len(ccs.index.get_level_values("cc").unique()) > 1:
        top_cc = ccs.loc[rtts[-1]]
        parts.append(
            f"aioquic's controllers at {rtts[-1]:g} ms RTT, TTFT: "
            + ", ".join(f"{cc} {_ms(v)}" for cc, v in top_cc.items())
            + "; a token stream never fills an initial window, so the controller is not "
            "expected to matter here."
        )
    if not stacks.empty and "cc" in stacks:
        ccs_text = "; ".join(f"{r.side}: {r.cc}" for r in stacks.itertuples())
        parts.append(f"Congestion control: {ccs_text}.")
    checked = relay_check(checks)
    if not checked.empty:
        ratios = pd.concat([checked["bytes_up_ratio"], checked["bytes_down_ratio"]]).dropna()
        if not ratios.empty:
            parts.append(
                f"The UDP relay's own count of the QUIC payload (received from the clients, "
                "forwarded to them) was "
                f"{ratios.min():.3f} to {ratios.max():.3f} times the clients' count "
                f"({len(checked)} relay runs)."
            )
    return " ".join(parts)
