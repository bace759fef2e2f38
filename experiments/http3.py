"""Experiment `http3`: every HTTP transport over HTTP/1.1, HTTP/2 and HTTP/3 through one Caddy,
at several round-trip times.

The path. One Caddy 2.6.2 (netem/caddy.py, `protocols h1 h2 h3`, the lab PKI) in front of the
server: HTTP/1.1 and HTTP/2 on TCP, HTTP/3 on QUIC (UDP) at the same port number. At RTT 0
the clients reach Caddy directly; at RTT R the TCP fault proxy (netem/proxy.py) and the UDP
relay (netem/udprelay.py) listen on ONE port number P (TCP P and UDP P), both with
`delay=R/2` each way, so one `Target` reaches both protocols through the same delay. This
kernel has no netem qdisc (netem/netns.py capabilities()): the delay is user-space relays',
one process each, late by the loop's timer granularity (about +0.5 ms a hop).

What is measured, per point (transport x version x QUIC controller x RTT), `clients` fresh
visitors each opening their own connection after a warm-up stream:
- first token (TTFT, from before the connect: it includes TCP connect + TLS 1.3, 2 RTT, or
  QUIC's combined handshake, 1 RTT), token latency percentiles with their counts, bytes per
  token by layer (analysis/layers.py; for QUIC the "wire" bytes are UDP payload, `source`
  "udp", counted by the client), connections, handshake time and packets (table
  `http3_connections`);
- per stack, the congestion controller and the socket buffers (table `http3_stacks`): Linux
  TCP's from /proc/sys/net/ipv4/tcp_congestion_control (the same kernel runs the clients,
  the proxy and Caddy on loopback, so both TCP ends use it); aioquic's on the client, swept
  by `quic_cc` ("reno" is aioquic's default, "cubic" its other); quic-go's on the server
  side, which is NOT configurable: every quic-go version read (including the
  lucas-clemente/quic-go that Caddy 2.6.2 embeds) builds `congestion.NewCubicSender(...,
  true /* use Reno */, ...)`, i.e. NewReno, so only the client's controller is swept and a
  token stream's bytes flow server -> client under quic-go's NewReno whatever `quic_cc` says.
  Buffers: net.core.{r,w}mem_{default,max}, tcp_{r,w}mem, a probe TCP socket's SO_RCVBUF /
  SO_SNDBUF at connect (autotuning grows them later), the QUIC clients' UDP sockets'
  (ConnStats.rcvbuf/sndbuf), and Caddy's UDP socket's as the kernel reports it (`ss -uam`:
  skmem rb/tb; quic-go asks for a larger receive buffer itself);
- the relay's own count of the UDP payload it forwarded against the QUIC clients' count
  (table `udp_relay_check`; warm-up included on both sides, per relay run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import http3 as h3a
from analysis.layers import byte_layers
from analysis.matrix import count_of
from clients.fleet import FleetSpec, run_fleet
from clients.net import Target
from clients.recorder import StreamRecord, measuring, to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, run_sync
from experiments.spec import RunSpec
from netem.udprelay import DelayedPath, delayed_path
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams
from transports.registry import get, keys_where

if TYPE_CHECKING:
    import pandas as pd

    from netem.fronts import ServedPath
    from records.store import StoredRun

NAME = "http3"
VERSIONS = ("1.1", "2", "3")
QUIC_SERVER_CC = "reno (quic-go NewCubicSender(reno=true), hard-coded; read, not measured)"
# what the relay received from the clients (up) and forwarded to them (down): the client's
# last datagrams (CONNECTION_CLOSE) may still wait in the relay's delay when it stops, and the
# server's last ones may reach the relay after the client closed its socket
RELAY_COUNTS = ("datagrams_up_received", "bytes_up_received", "datagrams_down", "bytes_down")
_SYSCTLS = ("net/core/rmem_default", "net/core/rmem_max", "net/core/wmem_default",
            "net/core/wmem_max", "net/ipv4/tcp_rmem", "net/ipv4/tcp_wmem")  # fmt: skip


def http_transports() -> tuple[str, ...]:
    """The transports that are plain HTTP requests (an upgraded WebSocket or a WebTransport
    session is not carried by the HTTP version under test)."""
    return keys_where(lambda t: t.connection == "http")


def _controllers() -> tuple[str, ...]:
    from clients.quic import CONGESTION_CONTROLLERS

    return CONGESTION_CONTROLLERS


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=http_transports)
    versions: tuple[str, ...] = VERSIONS
    rtts_ms: tuple[float, ...] = (0.0, 100.0)  # delay = RTT/2 each way, TCP and UDP alike
    quic_cc: tuple[str, ...] = ("reno", "cubic")  # aioquic's controller, client side
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 50.0
    clients: int = 4

    def __post_init__(self) -> None:
        for key in self.transports:
            if get(key).connection != "http":
                raise ParamError(f"{key} is not carried by the HTTP version under test (its "
                                 f"connection is {get(key).connection!r}): choose from "
                                 f"{', '.join(http_transports())}", param="transports")  # fmt: skip
        bad = [v for v in self.versions if v not in VERSIONS]
        if bad or not self.versions:
            raise ParamError(f"versions: {', '.join(bad) or 'none given'}; choose from "
                             f"{', '.join(VERSIONS)}", param="versions")  # fmt: skip
        if not self.rtts_ms or any(not 0 <= r < 10_000 for r in self.rtts_ms):
            raise ParamError("rtts_ms: round-trip times from 0 to 10000 ms", param="rtts_ms")
        bad = [c for c in self.quic_cc if c not in _controllers()]
        if bad or not self.quic_cc:
            raise ParamError(f"quic_cc: {', '.join(bad) or 'none given'}; aioquic has "
                             f"{', '.join(_controllers())}", param="quic_cc")  # fmt: skip


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=10, rate=50.0, clients=1, quic_cc=("reno",))


def condition(version: str, cc: str, rtt_ms: float) -> str:
    """The label: "HTTP/2, RTT 100 ms", "HTTP/3 (reno), RTT 0 ms"."""
    return f"{h3a.label(version, cc)}, RTT {rtt_ms:g} ms"


def _plan(spec: Spec) -> list[tuple[float, str, str]]:
    """(rtt, version, cc) groups in order; cc is "" over TCP."""
    return [(rtt, v, cc) for rtt in spec.rtts_ms for v in spec.versions
            for cc in (spec.quic_cc if v == "3" else ("",))]  # fmt: skip


@contextlib.contextmanager
def _path(served: ServedPath, rtt_ms: float) -> Iterator[tuple[Target, DelayedPath | None]]:
    """Caddy itself at RTT 0; else the TCP proxy and the UDP relay on one port number."""
    if rtt_ms <= 0:
        yield served.target, None
        return
    host, port = served.target.host, served.target.port
    with delayed_path(host, port, f"delay={rtt_ms / 2:g}ms") as relays:
        yield Target(host, relays.port, secure=True), relays


def _measure(point: Point, target: Target) -> tuple[list[StreamRecord], list[StreamRecord]]:
    """(warm-up records, measured records): a warm-up stream, then the fleet, measured."""
    fleet = FleetSpec(point.transport, point.clients, stack=point.stack)
    warm = run_sync(run_fleet(dataclasses.replace(fleet, clients=1), target, WARMUP,
                              point.options))  # fmt: skip
    with measuring():
        records = run_sync(run_fleet(fleet, target, point.params, point.options))
    return warm, records


def connection_rows(records: Sequence[StreamRecord], keys: dict[str, object]) -> list[dict]:
    """One row per connection: stack, controller, handshake time, datagrams/segments and
    bytes, buffers (-1: not measured, e.g. handshake packets over TCP)."""
    rows: list[dict[str, object]] = []
    for rec in records:
        for c in rec.conns:
            rows.append({
                **keys, "transport": rec.transport, "stream_id": rec.stream_id,
                "index": c.index, "stack": c.stack, "source": c.source,
                "http_version": c.http_version, "alpn": c.alpn, "cc": c.cc,
                "connect_ms": c.connect_ns / 1e6 if c.connect_ns >= 0 else None,
                "handshake_ms": c.handshake_ns / 1e6 if c.handshake_ns >= 0 else None,
                "handshake_packets_up": c.handshake_packets_up,
                "handshake_packets_down": c.handshake_packets_down,
                "handshake_bytes": c.tls_handshake_bytes_up + c.tls_handshake_bytes_down
                if c.tls_handshake_bytes_up >= 0 else -1,
                "packets_up": c.packets_up, "packets_down": c.packets_down,
                "bytes_up": c.bytes_up, "bytes_down": c.bytes_down,
                "retransmits": c.retransmits, "rcvbuf": c.rcvbuf, "sndbuf": c.sndbuf,
            })  # fmt: skip
    return rows


def _quic_counts(records: Sequence[StreamRecord]) -> dict[str, int]:
    conns = [c for r in records for c in r.conns if c.stack == "quic"]
    return {
        "client_datagrams_up": sum(c.packets_up for c in conns),
        "client_bytes_up": sum(c.bytes_up for c in conns),
        "client_datagrams_down": sum(c.packets_down for c in conns),
        "client_bytes_down": sum(c.bytes_down for c in conns),
    }


# -- the stacks' settings -------------------------------------------------------------------


def _sysctl(name: str) -> str:
    try:
        return " ".join(Path("/proc/sys", name).read_text().split())
    except OSError:
        return ""


def _tcp_probe(target: Target) -> tuple[int, int]:
    """SO_RCVBUF and SO_SNDBUF of a fresh TCP socket connected to `target` (at connect)."""
    try:
        with socket.create_connection((target.host, target.port), timeout=5) as sock:
            return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))  # fmt: skip
    except OSError:
        return -1, -1


def udp_socket_buffers(port: int) -> tuple[int, int]:
    """The receive and send buffer sizes the kernel reports (`ss -uam`, skmem rb/tb) for the
    UDP socket bound to 127.0.0.1:`port` (Caddy's QUIC listener); (-1, -1) if unreadable."""
    try:
        out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5, check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return -1, -1
    rb, tb = re.search(r"\brb(\d+)", out), re.search(r"\btb(\d+)", out)
    return (int(rb[1]) if rb else -1), (int(tb[1]) if tb else -1)


def stack_rows(served: ServedPath, conns: pd.DataFrame) -> list[dict[str, object]]:
    """Per stack and side: the congestion controller and the socket buffers (docstring)."""
    sysctl = {name.rsplit("/", 1)[1]: _sysctl(name) for name in _SYSCTLS}
    tcp_rcv, tcp_snd = _tcp_probe(served.target)
    udp_rcv, udp_snd = udp_socket_buffers(served.target.port)
    quic = conns[conns["stack"] == "quic"] if not conns.empty else conns

    def values(column: str) -> str:
        return ", ".join(str(v) for v in sorted(set(quic[column]))) if len(quic) else ""

    tcp_cc = _sysctl("net/ipv4/tcp_congestion_control") or "unknown"
    return [
        {"side": "TCP, clients and Caddy (one kernel)", "stack": "tcp", "cc": f"{tcp_cc} (Linux)",
         "so_rcvbuf": str(tcp_rcv), "so_sndbuf": str(tcp_snd), **sysctl},
        {"side": "QUIC client (aioquic)", "stack": "quic", "cc": values("cc") or "unknown",
         "so_rcvbuf": values("rcvbuf"), "so_sndbuf": values("sndbuf"), **sysctl},
        {"side": "QUIC server (Caddy's quic-go)", "stack": "quic", "cc": QUIC_SERVER_CC,
         "so_rcvbuf": str(udp_rcv), "so_sndbuf": str(udp_snd), **sysctl},
    ]  # fmt: skip


# -- run --------------------------------------------------------------------------------------


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    from netem.fronts import serve

    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    plan = _plan(spec)
    parts, points, conns, checks = [], [], [], []
    total = len(plan) * len(spec.transports)
    with (
        serve("caddy", http3="3" in spec.versions) as served,
        tqdm(total=total, desc=NAME, unit="point", disable=not progress) as bar,
    ):
        for rtt, version, cc in plan:
            label = condition(version, cc, rtt)
            client_counts: list[dict[str, int]] = []
            with _path(served, rtt) as (target, relays):
                for transport in spec.transports:
                    stack = served.stack(version, cc=cc or "reno")
                    point = Point(transport, params, label, ("rtt_ms", float(rtt)),
                                  clients=spec.clients, stack=stack)  # fmt: skip
                    warm, records = _measure(point, target)
                    keys = condition_keys(run_id, NAME, point)
                    parts.append(to_tables(records, keys))
                    conns += connection_rows(records, {**keys, "rtt_ms": rtt})
                    client_counts.append(_quic_counts([*warm, *records]))
                    points.append({"condition": label, "transport": transport,
                                   "version": version, "cc": cc, "rtt_ms": float(rtt),
                                   "net": f"delay={rtt / 2:g}ms" if rtt > 0 else ""})  # fmt: skip
                    bar.update()
            if relays is not None and version == "3":
                totals = relays.udp_totals
                summed = {k: sum(c[k] for c in client_counts) for k in client_counts[0]}
                checks.append({"condition": label, "rtt_ms": float(rtt), **summed,
                               **{f"relay_{k}": totals.get(k, -1) for k in RELAY_COUNTS},
                               "relay_flows": totals.get("flows", -1),
                               "relay_dropped": totals.get("dropped_up", 0)
                               + totals.get("dropped_down", 0)})  # fmt: skip
        conn_frame = pd.DataFrame(conns)
        stacks = pd.DataFrame(stack_rows(served, conn_frame))
    extra = {"http3_points": pd.DataFrame(points), "http3_connections": conn_frame,
             "http3_stacks": stacks, "udp_relay_check": pd.DataFrame(checks)}  # fmt: skip
    return dataclasses.replace(concat(parts), extra=extra)


# -- reading the stored run -------------------------------------------------------------------


def _table(run: StoredRun) -> pd.DataFrame:
    return h3a.summary(run.streams, run.tokens, run.extra["http3_points"])


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport, at the highest RTT measured: the first token HTTP/3 saved against
    HTTP/2, HTTP/3's handshake; at the lowest: the bytes per token HTTP/3 added."""
    table = _table(run)
    out: dict[str, dict[str, float]] = {}
    if table.empty:
        return out
    rtts = sorted(table["rtt_ms"].unique())
    for transport, rows in table.groupby("transport"):
        by = rows.set_index(["rtt_ms", "stack_label"])
        h3 = sorted(s for s in rows["stack_label"] if s.startswith("HTTP/3"))
        if not h3:
            continue
        entry = out.setdefault(str(transport), {})
        top, low, h2 = (rtts[-1], h3[0]), (rtts[0], h3[0]), h3a.label("2", "")
        if top in by.index:
            entry["h3_handshake_ms"] = float(by.loc[top, "handshake_p50_ms"])
            entry[count_of("h3_handshake_ms")] = float(by.loc[top, "streams"])
        if top in by.index and (rtts[-1], h2) in by.index:
            saved = by.loc[(rtts[-1], h2), "ttft_p50_ms"] - by.loc[top, "ttft_p50_ms"]
            entry["h3_ttft_saved_ms"] = float(saved)
            entry[count_of("h3_ttft_saved_ms")] = float(
                by.loc[top, "streams"] + by.loc[(rtts[-1], h2), "streams"]
            )
        if low in by.index and (rtts[0], h2) in by.index:
            added = by.loc[low, "bytes_per_token"] - by.loc[(rtts[0], h2), "bytes_per_token"]
            entry["h3_bytes_per_token"] = float(added)
            entry[count_of("h3_bytes_per_token")] = float(by.loc[low, "tokens"])
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    import pandas as pd

    checks = run.extra.get("udp_relay_check", pd.DataFrame())
    stacks = run.extra.get("http3_stacks", pd.DataFrame())
    return h3a.reading(_table(run), stacks, checks)


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    table = _table(run)
    streams = run.streams.merge(run.extra["http3_points"][["condition", "transport"]],
                                on=["condition", "transport"])  # fmt: skip
    layers = byte_layers(streams, ["condition", "transport"]).rename(
        columns={"tcp_per_token": "wire_per_token"})  # fmt: skip
    out = [
        ("Per RTT, HTTP version and transport: first token, token latency (n: latencies), bytes "
         "per token (source kernel: TCP payload; udp: QUIC's UDP payload)", table),
        ("First token by HTTP version (median over transports), against HTTP/1.1",
         h3a.version_ttft(table)),
        ("Bytes per token received, by layer (wire: TCP payload, or UDP payload for HTTP/3; "
         "QUIC's packet protection is not split out: its TLS columns are unknown)", layers),
    ]  # fmt: skip
    for name, title in (
        ("http3_connections", "Connections: handshake time, packets and bytes (-1: not counted)"),
        ("http3_stacks", "Congestion control and socket buffers, per stack and side"),
        ("udp_relay_check", "The UDP relay's count against the QUIC clients' (warm-up included)"),
    ):
        if name in run.extra and not run.extra[name].empty:
            frame = run.extra[name]
            out.append((title, h3a.relay_check(frame) if name == "udp_relay_check" else frame))
    return out


def _charts() -> tuple:
    from presentation import charts_http3

    return (charts_http3.ttft_chart,)


EXPERIMENT = Experiment(
    NAME,
    "every HTTP transport over HTTP/1.1, HTTP/2 and HTTP/3 (QUIC) through Caddy, at 0 and 100 ms"
    " RTT",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "h3_ttft_saved_ms": (
            "ms",
            "first-token time HTTP/3 saved against HTTP/2, highest RTT (http3)",
        ),
        "h3_handshake_ms": (
            "ms",
            "QUIC handshake (Initial to HandshakeCompleted), highest RTT (http3)",
        ),
        "h3_bytes_per_token": (
            "B",
            "bytes per token added by HTTP/3 (UDP payload) over HTTP/2 (TCP payload) (http3)",
        ),
    },
    facts=facts,
    charts=_charts(),
    captions={"http3_ttft.png": "First token by HTTP version and transport, per RTT"},
    tables=tables,
    reading=reading,
)
