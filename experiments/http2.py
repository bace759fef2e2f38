"""Experiment `http2`: every transport over HTTP/1.1 and HTTP/2 (both over TLS) through nginx
and Caddy, and what N concurrent streams from one client cost in connections and waiting.

Part 1, per front, HTTP version and transport: `clients` streams, each client on its own
connection(s) as a separate visitor; first token, token latency, bytes per token by layer
(analysis/layers.py) and connections. A WebSocket under an HTTP/2 stack keeps its own
HTTP/1.1 connection (clients/stack.py): the `h2_settings` table shows why, per front, from the
SETTINGS frame the front actually sent (read here over a TLS connection with ALPN "h2"):
without SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 3) there is no WebSocket over HTTP/2.

Part 2, SSE from one client: N streams at once, over HTTP/1.1 (N connections) and over one
multiplexed HTTP/2 connection, per front. Streams beyond the front's
SETTINGS_MAX_CONCURRENT_STREAMS wait in the client for a slot (RFC 9113 5.1.2; clients/h2.py)
and their first token shows it: nginx 1.22 sends 128, Caddy 2.6 (Go's net/http2) 250, both
measured into `h2_settings`. Extra table `h2_concurrency`: one row per (front, version, N).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from analysis import h2 as h2a
from analysis.layers import byte_layers
from analysis.matrix import count_of
from clients.fleet import FleetSpec, run_fleet
from clients.net import Target
from clients.recorder import StreamRecord, measuring, to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, measure_records, run_sync
from experiments.spec import RunSpec, over_tcp
from netem.fronts import HTTP2_FRONTS, ServedPath, serve
from presentation import charts_tls
from records.schema import Tables, concat
from streams.errors import ParamError, TransportError
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "http2"
VERSIONS = ("1.1", "2")


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    fronts: tuple[str, ...] = HTTP2_FRONTS
    tokens: int = 60
    rate: float = 20.0
    ttft_ms: float = 50.0
    clients: int = 4
    ns: tuple[int, ...] = (1, 10, 50, 200)  # part 2: concurrent streams from one client
    concurrency_transports: tuple[str, ...] = ("sse",)
    # 2 s a stream: all N must be open at once for the limit to bite, and one Python client
    # opens a stream every ~3 ms on the loaded 2-core machine (measured: 150 streams of 0.25 s
    # never had more than 94 open at once, so none waited)
    concurrency_tokens: int = 40
    concurrency_rate: float = 20.0


    def __post_init__(self) -> None:
        unknown = [f for f in self.fronts if f not in HTTP2_FRONTS]
        if unknown or not self.fronts:
            raise ParamError(f"fronts: {', '.join(unknown) or 'none given'}; HTTP/2 comes "
                             f"from {', '.join(HTTP2_FRONTS)}", param="fronts")  # fmt: skip
        if any(n < 1 for n in self.ns):
            raise ParamError("ns: concurrent streams must be at least 1", param="ns")


def quick(spec: Spec) -> Spec:
    # 150 > nginx's 128: the streams above it wait for a slot; Caddy's 250 admits them all.
    # No N=1: it is part 1's single SSE stream again, and its four points cost 4 s of the
    # 40 s the quick run may take (measured 47 s with it on the loaded 2-core machine)
    return dataclasses.replace(spec, tokens=20, rate=50.0, clients=2, ns=(20, 150),
                               concurrency_tokens=8, concurrency_rate=10.0)  # fmt: skip


def condition(front: str, http: str, n: int = 0) -> str:
    """The label: "nginx HTTP/2" (part 1), "nginx HTTP/2, 150 streams" (part 2)."""
    return f"{front} HTTP/{http}" + (f", {n} streams" if n else "")


async def read_settings(path: ServedPath) -> dict[int, int]:
    """The parameters of the front's first SETTINGS frame (RFC 9113 3.4: it opens the
    server's connection preface), over a TLS connection offering only "h2"."""
    import h2.config
    import h2.connection
    import h2.events

    from clients.tls import tls_connector

    conn = await tls_connector(path.ca_file, alpn=("h2",))(path.target)
    session = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    session.initiate_connection()
    try:
        async with asyncio.timeout(10):
            await conn.write(session.data_to_send())
            while data := await conn.read():
                for event in session.receive_data(data):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        changed = event.changed_settings.items()
                        return {int(code): s.new_value for code, s in changed}
    except TimeoutError as exc:
        raise TransportError(f"{path.front} sent no SETTINGS within 10 s") from exc
    finally:
        await conn.aclose()
    raise TransportError(f"{path.front} closed the connection before its SETTINGS")


async def one_session(point: Point, target: Target) -> tuple[list[StreamRecord], int]:
    """`measure_records` for the point's clients on ONE HTTP/2 session made here (run_fleet
    keeps its sessions inside), so that the session's own count of streams that waited for
    SETTINGS_MAX_CONCURRENT_STREAMS (`H2Session.slot_waits`) can be read: (records, waits)."""
    from clients.h2 import H2Session, shared_factory
    from transports.registry import get

    stack, params = point.stack, point.params
    alone = FleetSpec(point.transport, 1, stack=dataclasses.replace(stack, multiplex=1))
    await run_fleet(alone, target, WARMUP, point.options)
    cls = get(point.transport).client_class()
    session = H2Session(target, stack.connector())
    shared = shared_factory(session, raw_connector=stack.connector("http/1.1"))
    records = [StreamRecord(point.transport, cls.name, params.tokens, params.envelope)
               for _ in range(point.clients)]  # fmt: skip
    timeout_s = 3 * params.duration_s() + 10  # a stream that waited runs about twice as long

    async def one(i: int, rec: StreamRecord) -> None:
        rec.streams_per_conn = point.clients
        options = dataclasses.replace(point.options, seed=i)
        client = cls(options, http=shared, connector=stack.connector())
        try:
            async with asyncio.timeout(timeout_s):
                await client.run(target, params, rec)
        except TimeoutError:
            rec.failed(TimeoutError(f"stream not finished after {timeout_s:.1f} s"))

    with measuring():
        try:
            await asyncio.gather(*(one(i, rec) for i, rec in enumerate(records)))
        finally:
            records[0].conns += await session.aclose()  # counted once, as run_fleet does
    return records, session.slot_waits


def _measure(point: Point, path: ServedPath, run_id: str) -> tuple[Tables, float]:
    """The point's tables, and how many streams waited for a slot (NaN: not HTTP/2)."""
    if point.stack.multiplex > 1:
        records, waits = run_sync(one_session(point, path.target))
    else:
        records, waits = run_sync(measure_records(point, path.target)), -1
    keys = condition_keys(run_id, NAME, point)
    return to_tables(records, keys), float(waits) if waits >= 0 else float("nan")


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    part1 = [(t, v) for v in VERSIONS for t in spec.transports]
    part2 = [(t, v, n) for t in spec.concurrency_transports if t in spec.transports
             for n in spec.ns for v in VERSIONS]  # fmt: skip
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    burst = dataclasses.replace(params, tokens=spec.concurrency_tokens,
                                rate=spec.concurrency_rate)  # fmt: skip
    parts, settings, concurrency = [], [], []
    total = len(spec.fronts) * (len(part1) + len(part2))
    with tqdm(total=total, desc=NAME, unit="point", disable=not progress) as bar:
        for front in spec.fronts:
            with serve(front) as path:
                settings.append(h2a.settings_row(front, run_sync(read_settings(path))))
                for transport, http in part1:
                    point = Point(transport, params, condition(front, http),
                                  ("http_version", float(http)), clients=spec.clients,
                                  stack=path.stack(http))  # fmt: skip
                    parts.append(_measure(point, path, run_id)[0])
                    bar.update()
                for transport, http, n in part2:
                    stack = path.stack(http, multiplex=n if http == "2" else 1)
                    point = Point(transport, burst, condition(front, http, n),
                                  ("streams", float(n)), clients=n, stack=stack)  # fmt: skip
                    tables, waits = _measure(point, path, run_id)
                    parts.append(tables)
                    row = h2a.concurrency_row(tables.streams, tables.tokens)
                    concurrency.append({"front": front, "http": http, "transport": transport,
                                        "n": n, **row, "slot_waits": waits})  # fmt: skip
                    bar.update()
    extra = {"h2_settings": pd.DataFrame(settings), "h2_concurrency": pd.DataFrame(concurrency)}
    return dataclasses.replace(concat(parts), extra=extra)


def _part1(run: StoredRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    streams, tokens = run.streams, run.tokens
    return streams[streams["sweep"] == "http_version"], tokens[tokens["sweep"] == "http_version"]


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport, HTTP/2 against HTTP/1.1 through nginx: first-token time and bytes per
    token added; for SSE, connections per stream at the most concurrent streams measured."""
    streams, _ = _part1(run)
    h1 = streams[streams["condition"] == condition("nginx", "1.1")]
    h2 = streams[streams["condition"] == condition("nginx", "2")]
    out: dict[str, dict[str, float]] = {}
    for transport, rows in h2.groupby("transport"):
        base = h1[h1["transport"] == transport]
        if base.empty:
            continue
        entry = out.setdefault(str(transport), {})
        entry["h2_ttft_added_ms"] = float(rows["ttft_ms"].median() - base["ttft_ms"].median())
        entry[count_of("h2_ttft_added_ms")] = float(len(rows) + len(base))
        entry["h2_bytes_per_token"] = h2a.bytes_per_token(rows) - h2a.bytes_per_token(base)
        entry[count_of("h2_bytes_per_token")] = float(rows["tokens_received"].sum())
    conc = run.extra.get("h2_concurrency")
    if conc is not None and not conc.empty:
        mine = conc[(conc["front"] == "nginx") & (conc["http"].astype(str) == "2")]
        for transport, rows in mine.groupby("transport"):
            top = rows.loc[rows["n"].idxmax()]
            entry = out.setdefault(str(transport), {})
            entry["h2_conns_per_stream"] = float(top["conns_per_stream"])
            entry[count_of("h2_conns_per_stream")] = float(top["streams"])
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    added = f["h2_ttft_added_ms"].dropna().sort_values()
    per_token = f["h2_bytes_per_token"].dropna().sort_values()
    text = (
        f"Through nginx, HTTP/2 against HTTP/1.1 (both over TLS) changed the median first "
        f"token by {added.iloc[0]:+.1f} ms ({added.index[0]}) to {added.iloc[-1]:+.1f} ms "
        f"({added.index[-1]}) and the bytes per token by {per_token.iloc[0]:+.1f} "
        f"({per_token.index[0]}) to {per_token.iloc[-1]:+.1f} ({per_token.index[-1]})."
    )
    streams, _ = _part1(run)
    ws = streams[(streams["transport"] == "websocket") & streams["condition"].str.endswith("/2")]
    for row in run.extra["h2_settings"].itertuples():
        carried = _versions(ws[ws["condition"].str.startswith(f"{row.front} ")])
        connect = "advertises" if row.enable_connect_protocol else "does not advertise"
        text += (
            f" {row.front} sent SETTINGS_MAX_CONCURRENT_STREAMS {row.max_concurrent_streams:.0f}"
            f" and {connect} SETTINGS_ENABLE_CONNECT_PROTOCOL"
            + (f", so WebSocket under HTTP/2 kept its own HTTP/{carried} connection" if
               carried and not row.enable_connect_protocol else "") + "."
        )  # fmt: skip
    conc = run.extra["h2_concurrency"]
    for (front, transport), rows in conc.groupby(["front", "transport"], sort=False):
        top = rows[rows["n"] == rows["n"].max()]
        top = top.set_index(top["http"].astype(str))
        if {"1.1", "2"} <= set(top.index):
            h1, h2 = top.loc["1.1"], top.loc["2"]
            text += (
                f" {int(h2['n'])} {transport} streams from one client through {front}: "
                f"{h1['connections']:.0f} connections over HTTP/1.1, {h2['connections']:.0f} "
                f"over HTTP/2, where {h2['slot_waits']:.0f} streams waited for a slot (first token "
                f"at most {h2['ttft_max_ms']:.0f} ms, against {h1['ttft_max_ms']:.0f} ms)."
            )
    return text


def _versions(rows: pd.DataFrame) -> str:
    return "/".join(sorted(set(rows["http_version"].astype(str)))) if len(rows) else ""


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    streams, tokens = _part1(run)
    by = ["condition", "transport"]
    return [
        ("Per front, HTTP version and transport (http_version: what carried the streams)",
         h2a.summary(streams, tokens, by)),
        ("Bytes per token received, by layer (counted)", byte_layers(streams, by)),
        ("HTTP/2 SETTINGS each front sent (RFC 9113 6.5.2; 0x8: RFC 8441)",
         run.extra["h2_settings"]),
        ("N concurrent streams from one client: connections, first token, slot waits",
         run.extra["h2_concurrency"]),
    ]  # fmt: skip


EXPERIMENT = Experiment(
    NAME,
    "every transport over HTTP/1.1 and HTTP/2 through nginx and Caddy; N streams from one client",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "h2_ttft_added_ms": ("ms", "first-token time added by HTTP/2 over HTTP/1.1, nginx (http2)"),
        "h2_bytes_per_token": ("B", "bytes per token added by HTTP/2 over HTTP/1.1, nginx (http2)"),
        "h2_conns_per_stream": ("", "connections per stream, N streams from one client, HTTP/2"),
    },
    facts=facts,
    charts=(charts_tls.h2_byte_layers_chart, charts_tls.h2_concurrency_chart),
    captions={
        "byte_layers.png": "Bytes per token received, by layer, HTTP/1.1 and HTTP/2",
        "h2_concurrency.png": "Connections used and slowest first token against N streams",
    },
    tables=tables,
    reading=reading,
    tcp_only="nginx and Caddy over TCP",
)
