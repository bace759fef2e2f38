"""Experiment `tls`: what TLS costs each transport, and where the cost lands.

Every transport over the paths of netem/fronts.py: clear text straight to aiohttp (the
baseline), TLS terminated by aiohttp itself, by nginx and by Caddy (HTTP/1.1 over TLS: the
HTTP/2 question is the `http2` experiment's). Per point, in one measured window:

- first token with and without the handshake: `ttft_ms` runs from the request, before the
  TCP connect; `connect_ms` and `tls_handshake_ms` are recorded beside it
- bytes per token in layers, each counted (analysis/layers.py): payload, transport framing,
  HTTP framing, TLS records (22 bytes a TLS 1.3 record) and TLS setup, against the kernel's
  TCP count; `record_check` compares the kernel's TLS overhead with 22 x records counted
- CPU per token of the server and of the front (/proc, the children's own CPU, sampled
  around the measured fleet only, after its warm-up)
- recovery after a cut: a fault proxy (a TCP relay) between client and TLS endpoint resets
  every connection after `cut_after_s`; each reconnect pays a new TCP and TLS handshake,
  resumed with the previous session's ticket where the client offers it (it does: the
  `tls_connections` table says which handshakes resumed and what each cost)

Extra tables: `tls_cpu` (one row per point: CPU seconds of server and front, tokens),
`tls_connections` (one row per connection: handshake time and bytes, resumed or not) and
`byte_check`: after the measured points of each path, one more stream per transport with
our own packet capture on the endpoint's port (harness/capture.py), outside the measured
windows since its thread shares this process: the clients' kernel counts against the
capture's count of the same connections.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.layers import byte_layers, record_check
from analysis.matrix import count_of
from analysis.tls import cpu_table, first_token_table, handshake_table
from clients.base import ClientOptions
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord, connection_rows, measuring, to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, run_sync
from experiments.spec import RunSpec, over_tcp
from harness.children import proxied
from netem.fronts import FRONTS, ServedPath, label, serve
from presentation import charts_tls
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams
from transports.registry import keys_where

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "tls"
CUT_FRONTS = ("none", "aiohttp")  # recovery: clear text against TLS, same server
# The byte check's stream: long enough that what may arrive after the client closed (the
# server's close_notify, a last chunk: 24-51 bytes, seen by the capture and not by the
# closed socket) stays far under 1% of the connection's bytes (here ~25 kB down)
CHECK_PARAMS = GenParams(tokens=200, rate=2000.0, ttft_ms=0.0)


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    fronts: tuple[str, ...] = FRONTS
    tokens: int = 200
    rate: float = 100.0
    ttft_ms: float = 50.0
    clients: int = 8
    cut_after_s: float = 0.5  # 0: no cut points
    # recovery through cuts: the transports that resume on a connection they hold
    cut_transports: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: keys_where(lambda t: t.resumable and t.holds and t.incremental)
    )
    check_transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=20, backoff_ms=10.0)
    )


    def __post_init__(self) -> None:
        unknown = [f for f in self.fronts if f not in FRONTS]
        if unknown or not self.fronts:
            raise ParamError(f"fronts: {', '.join(unknown) or 'none given'}; choose from "
                             f"{', '.join(FRONTS)}", param="fronts")  # fmt: skip


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=20, rate=200.0, clients=2, cut_after_s=0.08,
                               cut_transports=("sse", "websocket"),
                               check_transports=("sse", "websocket"))  # fmt: skip


def _params(spec: Spec) -> GenParams:
    return GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)


def _point(spec: Spec, transport: str, path: ServedPath, cut: bool) -> Point:
    condition = label(path.front) + (f", cut every {spec.cut_after_s:g}s" if cut else "")
    return Point(transport, _params(spec), condition=condition,
                 sweep=("front", float(FRONTS.index(path.front))), clients=spec.clients,
                 net=f"cut_after={spec.cut_after_s:g}s,cut_mode=rst" if cut else "",
                 options=spec.options, stack=path.stack())  # fmt: skip


def _measure(point: Point, path: ServedPath) -> tuple[list[StreamRecord], dict[str, float]]:
    """Warm up, then the fleet in the measured window, with the CPU the server and the front
    spent in it (the warm-up's CPU stays out)."""
    with proxied(path.target, point.net) as relay:
        target = dataclasses.replace(relay, secure=path.target.secure)
        fleet = FleetSpec(point.transport, point.clients, stack=point.stack)
        if not point.net:  # a warm-up through the cutting proxy would itself be cut
            run_sync(run_fleet(dataclasses.replace(fleet, clients=1), target, WARMUP,
                               point.options))  # fmt: skip
        before = path.cpu_s()
        with measuring():
            records = run_sync(run_fleet(fleet, target, point.params, point.options))
        after = path.cpu_s()
    return records, {f"{k}_cpu_s": after[k] - before[k] for k in after}


def byte_check(path: ServedPath, transports: tuple[str, ...], params: GenParams,
               run_id: str) -> list[dict[str, object]]:  # fmt: skip
    """One stream per transport with the capture on: kernel counts against the capture's."""
    from harness.capture import Capture
    from streams.errors import EnvironmentUnavailable

    rows: list[dict[str, object]] = []
    for transport in transports:
        fleet = FleetSpec(transport, 1, stack=path.stack())
        try:
            with Capture(path.target.port) as capture:
                records = run_sync(run_fleet(fleet, path.target, params))
        except EnvironmentUnavailable as exc:  # no root or no AF_PACKET: say so in the table
            return [{"run_id": run_id, "front": path.front, "transport": "", "note": str(exc)}]
        up, down = capture.totals()
        kernel_up = sum(c.bytes_up for r in records for c in r.conns)
        kernel_down = sum(c.bytes_down for r in records for c in r.conns)
        rows.append({
            "run_id": run_id, "condition": label(path.front), "front": path.front,
            "transport": transport, "connections": sum(len(r.conns) for r in records),
            "kernel_up": kernel_up, "capture_up": up, "kernel_down": kernel_down,
            "capture_down": down, "down_ratio": kernel_down / down if down else float("nan"),
            "up_ratio": kernel_up / up if up else float("nan"),
            "capture_dropped": capture.dropped, "note": "",
        })  # fmt: skip
    return rows


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    plan = [(front, t, False) for front in spec.fronts for t in spec.transports]
    if spec.cut_after_s > 0:
        plan += [(front, t, True) for front in spec.fronts if front in CUT_FRONTS
                 for t in spec.cut_transports if t in spec.transports]  # fmt: skip
    parts, cpu_rows, conn_rows, check_rows = [], [], [], []
    with tqdm(total=len(plan), desc=NAME, unit="point", disable=not progress) as bar:
        for front in spec.fronts:
            with serve(front) as path:
                for _, transport, cut in [p for p in plan if p[0] == front]:
                    point = _point(spec, transport, path, cut)
                    records, cpu = _measure(point, path)
                    keys = condition_keys(run_id, NAME, point)
                    tables = to_tables(records, keys)
                    parts.append(tables)
                    cpu_rows.append({**keys, "front": front, "transport": transport, **cpu,
                                     "tokens": int(tables.streams["tokens_received"].sum())})
                    conn_rows += connection_rows(records, {**keys, "front": front})
                    bar.update()
                checked = tuple(t for t in spec.check_transports if t in spec.transports)
                check_rows += byte_check(path, checked, CHECK_PARAMS, run_id)
    extra = {"tls_cpu": pd.DataFrame(cpu_rows), "tls_connections": pd.DataFrame(conn_rows),
             "byte_check": pd.DataFrame(check_rows)}  # fmt: skip
    return dataclasses.replace(concat(parts), extra=extra)


def _rows(run: StoredRun, condition: str) -> pd.DataFrame:
    return run.streams[run.streams["condition"] == condition]


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport, TLS in aiohttp against clear text on the same server: handshake time,
    first-token time added, bytes per token added, and recovery through cuts with TLS."""
    clear, tls = _rows(run, label("none")), _rows(run, label("aiohttp"))
    out: dict[str, dict[str, float]] = {}
    for transport, rows in tls.groupby("transport"):
        base = clear[clear["transport"] == transport]
        entry = out.setdefault(str(transport), {})
        entry["tls_handshake_ms"] = float(rows["tls_handshake_ms"].median())
        entry[count_of("tls_handshake_ms")] = float(len(rows))
        tokens = max(1, int(rows["tokens_received"].sum()))
        # the records' overhead, counted per record: what every token pays however long the
        # answer; the handshake is paid once per connection and is its own figure
        entry["tls_bytes_per_token"] = float(rows["tls_overhead_down"].sum() / tokens)
        entry[count_of("tls_bytes_per_token")] = float(tokens)
        if not base.empty:
            entry["tls_ttft_added_ms"] = float(rows["ttft_ms"].median() - base["ttft_ms"].median())
            entry[count_of("tls_ttft_added_ms")] = float(len(rows) + len(base))
        entry["tls_conns_per_answer"] = float(rows["connections"].sum() / len(rows))
        entry[count_of("tls_conns_per_answer")] = float(len(rows))
    cut = run.streams[run.streams["condition"].str.startswith(label("aiohttp") + ", cut")]
    for transport, rows in cut.groupby("transport"):
        entry = out.setdefault(str(transport), {})
        entry["tls_cut_recovery_ms"] = float(rows["recovery_max_ms"].max())
        entry[count_of("tls_cut_recovery_ms")] = float(rows["reconnects"].sum())
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    added = f["tls_bytes_per_token"].dropna().sort_values()
    hs = f["tls_handshake_ms"].dropna()
    text = (
        f"TLS 1.3 (terminated by aiohttp) cost {added.iloc[0]:.1f} to {added.iloc[-1]:.1f} "
        f"bytes of record overhead per token ({added.index[0]} to {added.index[-1]}: fewer "
        "where one response carries several tokens) and a handshake of "
        f"{hs.median():.1f} ms (median over transports, loopback) before the first token"
    )
    clients = run.streams.groupby("condition")["stream_id"].nunique()
    peers = int(clients.max()) // max(1, run.streams["transport"].nunique())
    if peers > 1:  # handshakes started together share the one client process's CPU
        text += f", with {peers} clients per point handshaking at once from one Python process"
    text += "."
    if "byte_check" in run.extra and "down_ratio" in run.extra["byte_check"]:
        ratio = run.extra["byte_check"]["down_ratio"].dropna()
        if not ratio.empty and ratio.min() == ratio.max() == 1.0:
            text += (
                f" The clients' kernel byte counts equalled our packet capture's count on "
                f"every one of the {len(ratio)} connections checked."
            )
        elif not ratio.empty:
            text += (
                f" The clients' kernel byte counts were {ratio.min():.4f} to {ratio.max():.4f} "
                "times our packet capture's count of the same connections."
            )
    check = record_check(run.streams, ["condition", "transport"])
    if not check.empty:
        within = check[check["ratio"].between(0.9, 1.1)]
        text += (
            f" The kernel's TLS overhead was within 10% of 22 bytes times the records counted "
            f"for {len(within)} of {len(check)} transports and paths"
        )
        if len(within) < len(check):
            unread = check[~check.index.isin(within.index)]["unread_per_stream"]
            text += (
                f"; where it was not (few records per answer), the {unread.min():.0f} to "
                f"{unread.max():.0f} bytes per stream left over arrived after the client had "
                "its answer and closed (the server's close_notify, a last chunk)"
            )
        text += "."
    cpu = cpu_table(run).groupby("condition")["total_us_per_token"].median()
    if len(cpu) > 1:
        text += " CPU per token, server and front together (median over transports): " + (
            ", ".join(f"{c} {v:.0f} µs" for c, v in cpu.items())
        ) + "."
    return text


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    plain = run.streams[~run.streams["condition"].str.contains("cut")]
    out = [
        ("First token with and without the connection's handshakes (medians)",
         first_token_table(run.streams)),
        ("Bytes per token received, by layer (counted)",
         byte_layers(plain, ["condition", "transport"])),
        ("TLS overhead: kernel bytes against 22 bytes x records counted",
         record_check(run.streams, ["condition", "transport"])),
    ]  # fmt: skip
    if "tls_cpu" in run.extra:
        out.append(("CPU per token delivered (µs), server and front", cpu_table(run)))
    if "tls_connections" in run.extra:
        out.append(("TLS handshakes: full and resumed", handshake_table(run)))
    if "byte_check" in run.extra:
        out.append(("Kernel byte counts against our packet capture (one stream each)",
                    run.extra["byte_check"]))  # fmt: skip
    return out


EXPERIMENT = Experiment(
    NAME,
    "what TLS costs each transport: handshake, bytes per token by layer, CPU, reconnects",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "tls_handshake_ms": ("ms", "TLS 1.3 handshake before the first token (aiohttp TLS)"),
        "tls_ttft_added_ms": ("ms", "first-token time added by TLS, median (tls)"),
        "tls_bytes_per_token": ("B", "TLS record overhead per token received, counted (tls)"),
        "tls_conns_per_answer": ("", "TLS connections (handshakes) per answer (tls)"),
        "tls_cut_recovery_ms": ("ms", "longest recovery through cuts over TLS (tls)"),
    },
    facts=facts,
    charts=(charts_tls.byte_layers_chart,),
    captions={"byte_layers.png": "Bytes per token received, by layer, clear text and TLS"},
    tables=tables,
    reading=reading,
    tcp_only="the TLS fronts (aiohttp, nginx, Caddy over TCP)",
)
